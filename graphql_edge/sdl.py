"""The GraphQL schema (PROTOCOL.md section 7), as SDL.

Additions to the minimum of section 7, all additive (no client of the minimum breaks):
- ``Message.author: User!``: the author, batch-loaded (one ``get_users`` call per page).
- ``RoomEvent`` union members for the durable events other than MESSAGE_CREATE (``Message``):
  ``MessageUpdated`` (MESSAGE_UPDATE), ``MessageDeleted`` (MESSAGE_DELETE), ``ReactionAdded`` /
  ``ReactionRemoved`` (REACTION_ADD / REACTION_REMOVE), ``MemberJoined`` / ``MemberLeft``
  (MEMBER_JOIN / MEMBER_LEAVE). Each carries ``roomId`` and the room ``seq``.

``messages`` returns ChatService.history's order: newest first when paging back (no cursor, or
``before``), oldest first with ``after``; ``before`` and ``after`` together are BAD_USER_INPUT.
"""

SDL = """
type Query {
  me: User!
  user(id: ID!): User
  rooms: [Room!]!
  room(id: ID!): Room
  messages(roomId: ID!, before: ID, after: ID, limit: Int = 50): MessagePage!
  gateway(key: String): GatewayInfo!
}

type Mutation {
  register(username: String!, password: String!): AuthPayload!
  login(username: String!, password: String!): AuthPayload!
  refreshToken(refreshToken: String!): AuthPayload!
  logout(refreshToken: String!): Boolean!
  createRoom(name: String!, memberIds: [ID!]): Room!
  joinRoom(roomId: ID!): Room!
  leaveRoom(roomId: ID!): Boolean!
  sendMessage(roomId: ID!, content: String!, nonce: String!): Message!
  editMessage(id: ID!, content: String!): Message!
  deleteMessage(id: ID!): Boolean!
  addReaction(messageId: ID!, emoji: String!): Boolean!
  removeReaction(messageId: ID!, emoji: String!): Boolean!
}

type Subscription {
  roomEvents(roomId: ID!, afterSeq: Int): RoomEvent!
}

type AuthPayload { accessToken: String!, refreshToken: String!, expiresIn: Int!, user: User! }
type User { id: ID!, username: String!, status: String! }
type Room { id: ID!, name: String!, lastSeq: Int!, members: [User!]! }
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
}
type Reaction { emoji: String!, count: Int!, me: Boolean! }
type MessagePage { items: [Message!]!, hasMore: Boolean! }
type GatewayInfo { url: String!, gatewayId: String! }

type MessageUpdated { roomId: ID!, seq: Int!, id: ID!, content: String!, editedAt: String! }
type MessageDeleted { roomId: ID!, seq: Int!, id: ID! }
type ReactionAdded { roomId: ID!, seq: Int!, messageId: ID!, userId: ID!, emoji: String! }
type ReactionRemoved { roomId: ID!, seq: Int!, messageId: ID!, userId: ID!, emoji: String! }
type MemberJoined { roomId: ID!, seq: Int!, userId: ID! }
type MemberLeft { roomId: ID!, seq: Int!, userId: ID! }

union RoomEvent = Message | MessageUpdated | MessageDeleted | ReactionAdded | ReactionRemoved
  | MemberJoined | MemberLeft
"""
