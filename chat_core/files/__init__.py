"""Files and images of messages: uploads through presigned URLs, the server's checks, downloads
for members, thumbnails and the lifecycle sweep (``service``, ``worker``)."""
