"""The GraphQL schema (docs/protocol.md section 7), as SDL.

Additions to the minimum of section 7, all additive (no client of the minimum breaks):
- ``Message.author: User!``: the author, batch-loaded (one ``get_users`` call per page).
- ``RoomEvent`` union members for the durable events other than MESSAGE_CREATE (``Message``):
  ``MessageUpdated`` (MESSAGE_UPDATE), ``MessageDeleted`` (MESSAGE_DELETE), ``ReactionAdded`` /
  ``ReactionRemoved`` (REACTION_ADD / REACTION_REMOVE), ``MemberJoined`` / ``MemberLeft``
  (MEMBER_JOIN / MEMBER_LEAVE). Each carries ``roomId`` and the room ``seq``.
- Files (docs/protocol.md section 11): ``createUpload`` (a presigned upload URL), ``sendMessage``'s
  optional ``attachmentIds``, ``Message.attachments`` (``Attachment``, with a stable ``url`` on
  the edge and fresh presigned ``downloadUrl`` / ``thumbnailUrl``).

Access and accounts (issue 11; docs/protocol.md section 9 and docs/security.md):
- rooms are private unless ``createRoom(public: true)``; ``publicRooms`` lists public ones,
  ``joinRoom`` joins a public room or accepts an invitation; ``inviteToRoom``, ``invitations``,
  ``acceptInvitation``, ``declineInvitation``, ``removeMember``, ``setMemberRole``,
  ``openDirectRoom``; ``Room.public/direct/myRole/memberRoles``. A room the caller is not in
  answers exactly like an unknown one (``room`` null, NOT_FOUND elsewhere).
- ``login(totpCode)``, ``beginTwoFactorSetup``, ``confirmTwoFactor``, ``disableTwoFactor``,
  ``twoFactor``; ``sessions``, ``revokeSession``, ``changePassword``; ``userByUsername``.
- ``User.status`` is the live presence only for the caller and users sharing a room with them,
  "offline" for everyone else.

End-to-end encrypted rooms (issue 13; docs/e2e.md): ``createRoom(encrypted: true)``,
``Room.encrypted/keyEpoch/keyRotationDue``, ``Message.encrypted`` and ``MessageUpdated.encrypted``
(``content`` is "" then), ``sendMessage``/``editMessage`` take ``encrypted`` instead of
``content``; the key directory (``deviceList``, ``publishDeviceList``, ``proposeDevice``,
``deviceProposals``) and the sealed room keys (``rotateRoomKey``, ``shareRoomKeys``,
``roomKeys``, ``roomKeyStatus``). Binary values are base64url strings without padding.

``messages`` returns ChatService.history's order: newest first when paging back (no cursor, or
``before``), oldest first with ``after``; ``before`` and ``after`` together are BAD_USER_INPUT.
"""

SDL = """
type Query {
  me: User!
  user(id: ID!): User
  userByUsername(username: String!): User
  rooms: [Room!]!
  room(id: ID!): Room
  publicRooms(after: ID, limit: Int = 50): [Room!]!
  invitations: [Invitation!]!
  messages(roomId: ID!, before: ID, after: ID, limit: Int = 50): MessagePage!
  gateway(key: String): GatewayInfo!
  sessions: [AuthSession!]!
  twoFactor: TwoFactorStatus!
  searchUsers(prefix: String!, limit: Int = 10): [User!]!
  deviceList(userId: ID!, afterVersion: Int = 0): [SignedDeviceList!]!
  deviceProposals: [DeviceProposal!]!
  roomKeys(roomId: ID!, deviceId: String!, afterEpoch: Int = 0): [SealedRoomKey!]!
  roomKeyStatus(roomId: ID!): RoomKeyStatus!
}

type Mutation {
  register(username: String!, password: String!): AuthPayload!
  login(username: String!, password: String!, totpCode: String): AuthPayload!
  refreshToken(refreshToken: String!): AuthPayload!
  logout(refreshToken: String!): Boolean!
  revokeSession(id: ID!): Boolean!
  changePassword(currentPassword: String!, newPassword: String!): AuthPayload!
  beginTwoFactorSetup(password: String!): TwoFactorSetup!
  confirmTwoFactor(code: String!): [String!]!
  disableTwoFactor(code: String!): Boolean!
  createRoom(name: String!, memberIds: [ID!], public: Boolean = false,
             encrypted: Boolean = false): Room!
  openDirectRoom(userId: ID!): Room!
  joinRoom(roomId: ID!): Room!
  leaveRoom(roomId: ID!): Boolean!
  inviteToRoom(roomId: ID!, userIds: [ID!]!): [ID!]!
  acceptInvitation(roomId: ID!): Room!
  declineInvitation(roomId: ID!): Boolean!
  removeMember(roomId: ID!, userId: ID!): Boolean!
  setMemberRole(roomId: ID!, userId: ID!, role: RoomRole!): Boolean!
  sendMessage(roomId: ID!, content: String, nonce: String!, attachmentIds: [ID!],
              encrypted: EncryptedPayloadInput): Message!
  createUpload(
    roomId: ID!
    filename: String!
    contentType: String!
    size: Int!
    sha256: String!
  ): Upload!
  editMessage(id: ID!, content: String, encrypted: EncryptedPayloadInput): Message!
  deleteMessage(id: ID!): Boolean!
  addReaction(messageId: ID!, emoji: String!): Boolean!
  removeReaction(messageId: ID!, emoji: String!): Boolean!
  markRead(roomId: ID!, seq: Int!): ReadState!
  setRoomMuted(roomId: ID!, muted: Boolean!): ReadState!
  publishDeviceList(body: String!, signature: String!): Int!
  proposeDevice(body: String!, signature: String!): Boolean!
  rotateRoomKey(roomId: ID!, epoch: Int!, memberIds: [ID!]!, changes: Int!,
                senderDevice: String!, keys: [SealedRoomKeyInput!]!): Int!
  shareRoomKeys(roomId: ID!, epoch: Int!, senderDevice: String!,
                keys: [SealedRoomKeyInput!]!): Int!
}

type Subscription {
  roomEvents(roomId: ID!, afterSeq: Int): RoomEvent!
}

type AuthPayload { accessToken: String!, refreshToken: String!, expiresIn: Int!, user: User! }
type User { id: ID!, username: String!, status: String! }
type Room {
  id: ID!
  name: String!
  lastSeq: Int!
  members: [User!]!
  public: Boolean!
  direct: Boolean!
  myRole: RoomRole!
  memberRoles: [RoomMember!]!
  lastReadSeq: Int!
  unreadCount: Int!
  mentionCount: Int!
  muted: Boolean!
  encrypted: Boolean!
  keyEpoch: Int!
  keyRotationDue: Boolean!
}
enum RoomRole { OWNER ADMIN MEMBER }
type RoomMember { user: User!, role: RoomRole! }
type Invitation { roomId: ID!, roomName: String!, inviter: User!, createdAt: String! }
type AuthSession {
  id: ID!
  createdAt: String!
  lastUsedAt: String
  client: String
  current: Boolean!
}
type TwoFactorSetup { secret: String!, otpauthUri: String! }
type TwoFactorStatus { enabled: Boolean!, recoveryCodesLeft: Int! }
type ReadState {
  roomId: ID!
  lastReadSeq: Int!
  unreadCount: Int!
  mentionCount: Int!
  muted: Boolean!
}
type Message {
  id: ID!
  roomId: ID!
  seq: Int!
  authorId: ID!
  author: User!
  content: String!
  nonce: String
  createdAt: String!
  editedAt: String
  deleted: Boolean!
  reactions: [Reaction!]!
  mentions: [ID!]!
  attachments: [Attachment!]!
  encrypted: EncryptedPayload
}
type EncryptedPayload {
  ciphertext: String!
  nonce: String!
  epoch: Int!
  senderDevice: String!
  signature: String!
}
input EncryptedPayloadInput {
  ciphertext: String!
  nonce: String!
  epoch: Int!
  senderDevice: String!
  signature: String!
}
type SignedDeviceList { userId: ID!, version: Int!, body: String!, signature: String!,
                        createdAt: String! }
type DeviceProposal { deviceId: String!, body: String!, signature: String!, createdAt: String! }
type SealedRoomKey {
  roomId: ID!
  epoch: Int!
  userId: ID!
  deviceId: String!
  keyVersion: Int!
  senderId: ID!
  senderDevice: String!
  sealed: String!
  signature: String!
}
input SealedRoomKeyInput {
  userId: ID!
  deviceId: String!
  keyVersion: Int!
  sealed: String!
  signature: String!
}
type DeviceRef { userId: ID!, deviceId: String!, keyVersion: Int! }
type RoomKeyStatus {
  epoch: Int!
  rotationDue: Boolean!
  changes: Int!
  memberIds: [ID!]!
  missing: [DeviceRef!]!
}
type Attachment {
  id: ID!
  filename: String!
  contentType: String!
  size: Int!
  width: Int
  height: Int
  url: String!
  downloadUrl: String!
  thumbnailUrl: String
}
type Upload { id: ID!, url: String!, method: String!, headers: [HttpHeader!]!, expiresAt: String! }
type HttpHeader { name: String!, value: String! }
type Reaction { emoji: String!, count: Int!, me: Boolean! }
type MessagePage { items: [Message!]!, hasMore: Boolean! }
type GatewayInfo { url: String!, gatewayId: String! }

type MessageUpdated { roomId: ID!, seq: Int!, id: ID!, content: String!, editedAt: String!,
                      encrypted: EncryptedPayload }
type MessageDeleted { roomId: ID!, seq: Int!, id: ID! }
type ReactionAdded { roomId: ID!, seq: Int!, messageId: ID!, userId: ID!, emoji: String! }
type ReactionRemoved { roomId: ID!, seq: Int!, messageId: ID!, userId: ID!, emoji: String! }
type MemberJoined { roomId: ID!, seq: Int!, userId: ID! }
type MemberLeft { roomId: ID!, seq: Int!, userId: ID!, removedBy: ID }

union RoomEvent = Message | MessageUpdated | MessageDeleted | ReactionAdded | ReactionRemoved
  | MemberJoined | MemberLeft
"""
