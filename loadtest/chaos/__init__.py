"""The fault-injection suite: ``shardchat bench chaos`` (loadtest/scenarios/chaos.py).

``proxy`` is the TCP fault proxy between the services and each engine, ``schedule`` the
nemesis's seeded fault plan, ``nemesis`` what carries it out, ``client`` the client processes
(members and senders), ``checker`` the accounting (pure: records in, table out).
"""
