"""The one registry of message types: stable numeric IDs and field schemas.

Every message is a NamedTuple. On the wire its body is a msgpack array of the fields
in declaration order (positional: smaller and faster to pack than a map); trailing
fields that have defaults may be omitted by the sender. Each field's validator sits in
its ``Annotated`` metadata, so the schema and the Python type are written once.

IDs follow the original's numbering where it had one (docs/PROTOCOL.md). A new
message gets a new ID; an ID is never reused for something else.
"""

from enum import IntEnum
from typing import Annotated, Any, NamedTuple, get_type_hints

from macula.wire.compile import compile_decoder
from macula.wire.fields import (
    U8, U16, U32, U64, AnyValue, max_container, Bool, Bytes, ListOf, MapOf, Opt, Str, Struct,
    Validator,
)


class MsgType(IntEnum):
    # session
    CONNECT = 0x01
    CONNECTED = 0x02
    PING = 0x03
    PONG = 0x04
    ERROR = 0x05
    GOAWAY = 0x06
    # pub/sub
    PUBLISH = 0x10
    SUBSCRIBE = 0x11
    UNSUBSCRIBE = 0x12
    PUBSUB_ROUTE = 0x13
    DELIVER = 0x14
    PUBSUB_FLOW = 0x15
    # RPC
    CALL = 0x20
    REPLY = 0x21
    REGISTER = 0x22
    UNREGISTER = 0x23
    # membership (SWIM)
    SWIM_PING = 0x30
    SWIM_ACK = 0x31
    SWIM_PING_REQ = 0x32
    # DHT
    FIND_NODE = 0x40
    FIND_NODE_REPLY = 0x41
    STORE = 0x42
    FIND_VALUE = 0x43
    FIND_VALUE_REPLY = 0x44
    STORE_REPLY = 0x45
    DHT_PING = 0x46
    DHT_PONG = 0x47
    # NAT traversal
    NAT_PROBE = 0x50
    NAT_PROBE_REPLY = 0x51
    PUNCH_REQUEST = 0x52
    PUNCH_COORDINATE = 0x53
    PUNCH_RESULT = 0x55
    RELAY_REQUEST = 0x56
    RELAY_DATA = 0x57
    # bridge (federation)
    BRIDGE_RPC = 0x60
    BRIDGE_DATA = 0x61
    # gossip
    GOSSIP_PUSH = 0x70
    GOSSIP_PULL = 0x71
    GOSSIP_DIGEST = 0x72
    GOSSIP_STATE = 0x73
    GOSSIP_ACK = 0x74


# ---- shared field types -------------------------------------------------------------
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"

NodeId = Annotated[bytes, Bytes(32, 32)]
Key256 = Annotated[bytes, Bytes(32, 32)]
Realm = Annotated[str, Str(64, 1, pattern=NAME_PATTERN)]
NodeName = Annotated[str, Str(64, 1, pattern=NAME_PATTERN)]
Role = Annotated[str, Str(8, choices=("node", "client"))]
Host = Annotated[str, Str(253, 1)]
Port = Annotated[int, U16]
ADDR = Struct(Str(253, 1), U16)
Addr = Annotated[tuple, ADDR]
OptAddr = Annotated[Any, Opt(ADDR)]
ReqId = Annotated[int, U64]
Code = Annotated[int, U16]
Text = Annotated[str, Str(1024)]
Payload = Annotated[bytes, Bytes(1 << 30)]  # bounded in practice by the frame size
Topic = Annotated[str, Str(512, 1)]
Procedure = Annotated[str, Str(256, 1)]
Caps = Annotated[tuple, ListOf(Str(32, 1), 32)]
CONTACT = Struct(Bytes(32, 32), Str(253, 1), U16)  # node_id, host, port
Contacts = Annotated[tuple, ListOf(CONTACT, 64)]
AnyData = Annotated[Any, AnyValue()]
Headers = Annotated[Any, Opt(MapOf(Str(64, 1), Str(1024), 32))]


class MessageSpec(NamedTuple):
    type: MsgType
    cls: type
    validators: tuple[tuple[str, Validator], ...]
    required: int
    total: int
    defaults: tuple
    decode: Any  # generated: decode(fields, n) -> message, raises FieldError
    max_container: int = 0  # longest array/map in a valid body (the decoder's cap)


REGISTRY: dict[int, MessageSpec] = {}


def message(msg_type: MsgType):
    """Register a NamedTuple class as the message for ``msg_type``."""

    def register(cls):
        if msg_type in REGISTRY:
            raise RuntimeError(f"message type {msg_type!r} registered twice")
        hints = get_type_hints(cls, include_extras=True)
        validators = []
        for name in cls._fields:
            metadata = getattr(hints[name], "__metadata__", ())
            if not metadata or not callable(metadata[0]):
                raise RuntimeError(f"{cls.__name__}.{name} has no validator")
            validators.append((name, metadata[0]))
        defaults = tuple(cls._field_defaults[name] for name in cls._fields
                         if name in cls._field_defaults)
        total = len(cls._fields)
        cls.TYPE = msg_type
        required = total - len(defaults)
        # validators report a long list with its field path; the cap only stops absurd ones
        longest = max([4096, total] + [2 * max_container(v) for _, v in validators])
        REGISTRY[msg_type] = MessageSpec(msg_type, cls, tuple(validators), required, total,
                                         defaults, compile_decoder(cls, tuple(validators),
                                                                   required, defaults), longest)
        return cls

    return register


# ---- session ------------------------------------------------------------------------
@message(MsgType.CONNECT)
class Connect(NamedTuple):
    """First frame of the dialer. Binds the identity key to this very connection."""
    version: Annotated[int, U16]
    node_id: NodeId
    realm: Realm
    role: Role
    name: NodeName
    listen: OptAddr            # where this node accepts connections (None for clients)
    identity_key: Annotated[bytes, Bytes(32, 32)]   # Ed25519 raw public key
    identity_sig: Annotated[bytes, Bytes(64, 64)]   # identity key over its cert's key
    cert: Annotated[bytes, Bytes(16384, 1)]          # the dialer's certificate, DER
    cert_sig: Annotated[bytes, Bytes(512, 1)]        # cert key over this connection
    chain: Annotated[tuple, ListOf(Bytes(16384, 1), 4)] = ()
    caps: Caps = ()
    boot: Annotated[bytes, Bytes(16)] = b""       # random per process start (see PROTOCOL.md)
    credential: Annotated[bytes, Bytes(1024)] = b""  # realm membership (docs/AUTH.md)


@message(MsgType.CONNECTED)
class Connected(NamedTuple):
    """The acceptor's answer. Its certificate is the TLS one the dialer already saw."""
    version: Annotated[int, U16]
    node_id: NodeId
    realm: Realm
    name: NodeName
    listen: OptAddr
    identity_key: Annotated[bytes, Bytes(32, 32)]
    identity_sig: Annotated[bytes, Bytes(64, 64)]
    observed: Addr                                  # the dialer's address as seen here
    caps: Caps = ()
    boot: Annotated[bytes, Bytes(16)] = b""
    credential: Annotated[bytes, Bytes(1024)] = b""  # realm membership (docs/AUTH.md)


@message(MsgType.PING)
class Ping(NamedTuple):
    seq: Annotated[int, U32]


@message(MsgType.PONG)
class Pong(NamedTuple):
    seq: Annotated[int, U32]


@message(MsgType.ERROR)
class Error(NamedTuple):
    code: Code
    message: Text
    ref_type: Annotated[Any, Opt(U8)] = None   # type of the frame that caused it
    ref_id: Annotated[Any, Opt(U64)] = None    # request it answers, when known


@message(MsgType.GOAWAY)
class GoAway(NamedTuple):
    code: Code
    reason: Text = ""


# ---- pub/sub ------------------------------------------------------------------------
@message(MsgType.PUBLISH)
class Publish(NamedTuple):
    topic: Topic
    payload: Payload
    reply_to: Annotated[Any, Opt(Str(512, 1))] = None
    headers: Headers = None


@message(MsgType.SUBSCRIBE)
class Subscribe(NamedTuple):
    sub_id: Annotated[int, U32]
    pattern: Topic
    group: Annotated[Any, Opt(Str(64, 1, pattern=NAME_PATTERN))] = None


@message(MsgType.UNSUBSCRIBE)
class Unsubscribe(NamedTuple):
    sub_id: Annotated[int, U32]


@message(MsgType.PUBSUB_ROUTE)
class PubsubRoute(NamedTuple):
    """A publish forwarded node to node. The receiver delivers locally only: to its plain
    subscribers if ``plain``, and to one local member of each group in ``groups``."""
    origin: NodeId
    topic: Topic
    payload: Payload
    plain: Annotated[bool, Bool()] = True
    groups: Annotated[tuple, ListOf(Str(64, 1, pattern=NAME_PATTERN), 64)] = ()
    reply_to: Annotated[Any, Opt(Str(512, 1))] = None
    headers: Headers = None


@message(MsgType.DELIVER)
class Deliver(NamedTuple):
    """A message handed to a light client's subscription."""
    sub_id: Annotated[int, U32]
    topic: Topic
    payload: Payload
    reply_to: Annotated[Any, Opt(Str(512, 1))] = None
    headers: Headers = None


@message(MsgType.PUBSUB_FLOW)
class PubsubFlow(NamedTuple):
    """Back-pressure on publishes: a node whose outbox toward a subscriber is congested
    asks the session that fed it (a publishing client, or the node that routed the
    publishes) to hold back, for at most ``hold_ms``, or until ``paused`` False comes."""
    paused: Annotated[bool, Bool()]
    hold_ms: Annotated[int, U32] = 0


# ---- RPC ----------------------------------------------------------------------------
@message(MsgType.CALL)
class Call(NamedTuple):
    call_id: ReqId
    procedure: Procedure
    args: Payload
    timeout_ms: Annotated[int, U32] = 5000
    idempotent: Annotated[bool, Bool()] = False


@message(MsgType.REPLY)
class Reply(NamedTuple):
    call_id: ReqId
    ok: Annotated[bool, Bool()]
    result: Payload = b""
    error_code: Annotated[Any, Opt(U16)] = None
    error: Annotated[Any, Opt(Str(1024))] = None


@message(MsgType.REGISTER)
class Register(NamedTuple):
    procedure: Procedure


@message(MsgType.UNREGISTER)
class Unregister(NamedTuple):
    procedure: Procedure


# ---- membership ---------------------------------------------------------------------
# SWIM with Lifeguard (macula.membership). An update says what one member's state is at
# one incarnation; suspect updates name the member that suspects, so independent
# suspicions can be counted. States: 0 alive, 1 suspect, 2 dead, 3 left (the core
# refuses other values).
SWIM_MAX_UPDATES = 64
MEMBER_UPDATE = Struct(Bytes(32, 32), U8, U32, Opt(ADDR), Opt(Bytes(32, 32)))
Updates = Annotated[tuple, ListOf(MEMBER_UPDATE, SWIM_MAX_UPDATES)]


@message(MsgType.SWIM_PING)
class SwimPing(NamedTuple):
    """A probe. ``sync`` asks for the whole member table back (join, periodic sync)."""
    seq: Annotated[int, U32]
    updates: Updates = ()
    sync: Annotated[bool, Bool()] = False


@message(MsgType.SWIM_ACK)
class SwimAck(NamedTuple):
    """Answers a ping (or relays one for a ping-req). ``nack``: the relay got no answer
    from the target in time (Lifeguard: tells the requester its own links work)."""
    seq: Annotated[int, U32]
    updates: Updates = ()
    nack: Annotated[bool, Bool()] = False


@message(MsgType.SWIM_PING_REQ)
class SwimPingReq(NamedTuple):
    """Asks the receiver to ping ``target`` and relay the ack (an indirect probe)."""
    seq: Annotated[int, U32]
    target: NodeId
    updates: Updates = ()


# ---- DHT ----------------------------------------------------------------------------
# Requests carry a req_id the reply echoes; the requester only accepts a reply from the
# node it asked. Keys are SHA-256(realm "\0" name) (macula.dht.ids.make_key).
DHT_VALUE_MAX = 8192       # one record's value
DHT_RECORDS_MAX = 128      # records per message; senders also keep to a byte budget
RECORD = Struct(Bytes(32, 32), Bytes(DHT_VALUE_MAX), U32)  # publisher, value, ttl left (s)
DhtRecords = Annotated[tuple, ListOf(RECORD, DHT_RECORDS_MAX)]


@message(MsgType.FIND_NODE)
class FindNode(NamedTuple):
    req_id: ReqId
    target: Key256


@message(MsgType.FIND_NODE_REPLY)
class FindNodeReply(NamedTuple):
    req_id: ReqId
    nodes: Contacts            # the replier's closest to the target, at most k


@message(MsgType.STORE)
class Store(NamedTuple):
    """Upsert provider records under ``key``, one per publisher. A record whose
    publisher is the sender is authoritative (ttl 0 withdraws it); any other is a
    replica and only replaces a copy that expires earlier."""
    req_id: ReqId
    key: Key256
    records: DhtRecords


@message(MsgType.STORE_REPLY)
class StoreReply(NamedTuple):
    req_id: ReqId
    ok: Annotated[bool, Bool()]
    code: Annotated[Any, Opt(U16)] = None   # ErrorCode when refused


@message(MsgType.FIND_VALUE)
class FindValue(NamedTuple):
    req_id: ReqId
    key: Key256


@message(MsgType.FIND_VALUE_REPLY)
class FindValueReply(NamedTuple):
    req_id: ReqId
    records: DhtRecords        # live records held for the key (may be a random subset)
    nodes: Contacts = ()       # closest to the key, so the lookup can go on


@message(MsgType.DHT_PING)
class DhtPing(NamedTuple):
    """Liveness probe of the oldest contact of a full bucket before evicting it."""
    req_id: ReqId


@message(MsgType.DHT_PONG)
class DhtPong(NamedTuple):
    req_id: ReqId


# ---- NAT traversal ------------------------------------------------------------------
@message(MsgType.NAT_PROBE)
class NatProbe(NamedTuple):
    req_id: ReqId


@message(MsgType.NAT_PROBE_REPLY)
class NatProbeReply(NamedTuple):
    req_id: ReqId
    observed: Addr


@message(MsgType.PUNCH_REQUEST)
class PunchRequest(NamedTuple):
    session_id: ReqId
    target: NodeId


@message(MsgType.PUNCH_COORDINATE)
class PunchCoordinate(NamedTuple):
    session_id: ReqId
    peer: NodeId
    peer_addrs: Annotated[tuple, ListOf(ADDR, 8)]
    punch_at_ms: Annotated[int, U32]  # delay from receipt, milliseconds
    role: Annotated[str, Str(16, choices=("dial", "accept"))]


@message(MsgType.PUNCH_RESULT)
class PunchResult(NamedTuple):
    session_id: ReqId
    ok: Annotated[bool, Bool()]


@message(MsgType.RELAY_REQUEST)
class RelayRequest(NamedTuple):
    session_id: ReqId
    target: NodeId


@message(MsgType.RELAY_DATA)
class RelayData(NamedTuple):
    session_id: ReqId
    payload: Payload


# ---- bridge -------------------------------------------------------------------------
@message(MsgType.BRIDGE_RPC)
class BridgeRpc(NamedTuple):
    req_id: ReqId
    level: Annotated[int, U8]
    op: Annotated[str, Str(64, 1)]
    args: AnyData


@message(MsgType.BRIDGE_DATA)
class BridgeData(NamedTuple):
    req_id: ReqId
    ok: Annotated[bool, Bool()]
    data: AnyData


# ---- gossip -------------------------------------------------------------------------
# Named CRDT replicas (macula.gossip). States travel as plain msgpack values checked by
# the macula.crdt decoders; a message stays under the sender's byte bound. Delta ids
# (``ids``, ``known``) are causal contexts over (replica, delta number).
GOSSIP_MAX_ITEMS = 4096
GOSSIP_MAX_NAMES = 256
GOSSIP_NAME = Str(64, 1, pattern=NAME_PATTERN)
GOSSIP_ENTRY = Struct(AnyValue(), GOSSIP_NAME, AnyValue())      # delta ids, name, delta
GOSSIP_PIECE = Struct(GOSSIP_NAME, AnyValue())                  # name, part of a state
Digests = Annotated[tuple, ListOf(Struct(GOSSIP_NAME, Bytes(8, 8)), GOSSIP_MAX_NAMES)]
Known = Annotated[Any, AnyValue()]


@message(MsgType.GOSSIP_PUSH)
class GossipPush(NamedTuple):
    """Deltas the receiver lacks; ``known``: the delta ids the sender has merged."""
    seq: Annotated[int, U64]
    entries: Annotated[tuple, ListOf(GOSSIP_ENTRY, GOSSIP_MAX_ITEMS)]
    known: Known = ()


@message(MsgType.GOSSIP_PULL)
class GossipPull(NamedTuple):
    """Asks for the state of each listed name whose digest differs from the sender's."""
    digests: Digests


@message(MsgType.GOSSIP_DIGEST)
class GossipDigest(NamedTuple):
    """Anti-entropy: like PULL, and the receiver pulls back what differed."""
    digests: Digests


@message(MsgType.GOSSIP_STATE)
class GossipState(NamedTuple):
    """Whole states, split into pieces. On the ``last`` message of a transfer,
    ``known`` is what the receiver has merged once it has all the pieces."""
    seq: Annotated[int, U64]
    pieces: Annotated[tuple, ListOf(GOSSIP_PIECE, GOSSIP_MAX_ITEMS)]
    known: Known = ()
    last: Annotated[bool, Bool()] = True


@message(MsgType.GOSSIP_ACK)
class GossipAck(NamedTuple):
    """Answers a PUSH, or the last STATE of a transfer: merged up to ``known``."""
    seq: Annotated[int, U64]
    known: Known = ()
