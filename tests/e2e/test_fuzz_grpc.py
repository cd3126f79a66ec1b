"""Property: whatever a caller sends to any RPC, the answer is a documented status code,
never INTERNAL or UNKNOWN, and a refused request stores nothing.

Requests are generated from the message descriptors of notifier.proto, so a field added
to the proto is fuzzed without touching this file: every field gets random values (odd
unicode, NULs, huge strings, negative and huge numbers, unknown enum values, repeated
fields with many items), and every method also gets raw random bytes as its request.
One server (no dispatcher) serves the whole module from its own loop in a thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifier.config import load_settings
from notifier.server import NotifierServer, create_server
from notifier_proto.v1 import notifier_pb2 as pb
from tests.support.background import LoopThread, table_counts
from tests.support.databases import count_rows
from tests.support.rpc import field_violations

if TYPE_CHECKING:
    from notifier_proto.v1.notifier_pb2_grpc import NotifierAsyncStub as Stub

SERVICE = pb.DESCRIPTOR.services_by_name["Notifier"]
METHODS = {m.name: m for m in SERVICE.methods}
ADMIN = "+14155550199"
EXAMPLES = 100

# Codes a caller may see for what it sent (SPEC §2). UNIMPLEMENTED only answers
# wait_for_acceptance on a replica without a dispatcher, as this one is.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
MAX_REQUEST = 4 * 1024 * 1024  # gRPC's default: larger requests are RESOURCE_EXHAUSTED

# Values that reach past the first checks (valid numbers, ids, SIDs) mixed with the
# classic troublemakers; the seeded message ids are filled in by the fixture.
SEEDED: list[str] = []
SEEN: Counter[tuple[str, str]] = Counter()  # (method, code name): printed at the end
INTERESTING = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "+14155550100",
    "whatsapp:+14155550100",
    "WhatsApp:+447911123456",
    "whatsapp:",
    "+1",
    "+999999999999999999999",
    "0",
    "-1",
    "1e309",
    "NaN",
    "12.50",
    "-0.01",
    "99999999999999999999999999.999",
    "EUR",
    "usd",
    "XXX",
    "Europe/Lisbon",
    "Not/A_Zone",
    "../../etc/passwd",
    "HX" + "0123456789abcdef" * 2,
    "HX" + "0" * 31,
    "SM" + "0" * 32,
    "01J00000000000000000000000",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "https://e.com/a.png",
    "http://insecure.example/a.png",
    "javascript:alert(1)",
    "STOP",
    "\u202eevil",
    "\ufeffbom",
    "e\u0301\u0301\u0301",
    "🦄👩‍👩‍👧‍👦",
    "\U0001d54f" * 3,
    "%s%n%x",
    "' OR 1=1 --",
    "{{1}}",
    "x" * 1600,
    "x" * 1601,
    "ẞ" * 800,
]


NO_SURROGATES: list[Literal["Cs"]] = ["Cs"]  # not encodable as UTF-8: protobuf refuses them


def _text(big: bool) -> st.SearchStrategy[str]:
    weird = st.text(st.characters(exclude_categories=NO_SURROGATES), max_size=40)
    seeded = st.integers(0, 7).map(lambda i: SEEDED[i % len(SEEDED)] if SEEDED else "")
    options = [st.sampled_from(INTERESTING), weird, seeded]
    if big:
        huge = st.tuples(
            st.sampled_from(["x", "é", "\U0001d54f", "\x00", "7", "\u202e"]),
            st.integers(1_000, 100_000),
        ).map(lambda t: t[0] * t[1])
        options.append(huge)
    return st.one_of(options)


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [lo, hi, -1, 0, 1, 2, 100, 10_000, 253402300799, 2**31]
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


def _scalar(field: FieldDescriptor, depth: int, big: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _text(big)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        # proto3 enums are open: unknown numbers travel, and must be refused cleanly.
        return st.one_of(st.sampled_from(known), _integers(-(2**31), 2**31 - 1))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(_nested(field), depth + 1, big)
    lo, hi = _INT_RANGES[kind]
    return _integers(lo, hi)


def _nested(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _repeated(field: FieldDescriptor, depth: int, big: bool) -> st.SearchStrategy[list[Any]]:
    few = st.lists(_scalar(field, depth, big), max_size=4)
    # Many items: one small value repeated, so size stays under gRPC's 4 MB limit.
    many = st.tuples(_scalar(field, depth, False), st.integers(50, 600)).map(
        lambda t: [t[0]] * t[1]
    )
    return st.one_of(few, few, many)


def _map(field: FieldDescriptor, depth: int, big: bool) -> st.SearchStrategy[dict[Any, Any]]:
    key_f = _nested(field).fields_by_name["key"]
    value_f = _nested(field).fields_by_name["value"]
    few = st.dictionaries(_scalar(key_f, depth, False), _scalar(value_f, depth, big), max_size=4)
    many = st.integers(50, 400).map(lambda n: {str(i): "v" for i in range(n)})
    return st.one_of(few, few, many)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, depth: int, big: bool) -> Message:
    msg = GetMessageClass(desc)()
    if depth > 3:
        return msg
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in desc.oneofs
    }
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if chosen_oneofs[oneof.name] is not field:
                continue
        elif not draw(st.booleans()):
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            target = getattr(msg, field.name)
            for key, value in draw(_map(field, depth, big)).items():
                if _nested(field).fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            values = draw(_repeated(field, depth, big))
            target = getattr(msg, field.name)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target.extend(values)
            else:
                target.extend(values)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(_scalar(field, depth, big)))
        else:
            setattr(msg, field.name, draw(_scalar(field, depth, big)))
    return msg


def messages(desc: Any, depth: int = 0, big: bool = True) -> st.SearchStrategy[Message]:
    return _message(desc, depth, big)


def _valid(name: str) -> Message:
    """A request the server accepts, so mutations of it reach storage and the replay paths."""
    first = SEEDED[0] if SEEDED else ""
    return {
        "SendMessage": pb.SendMessageRequest(to="+14155550100", body="hi"),
        "SendBulk": pb.SendBulkRequest(items=[pb.BulkItem(to="+14155550100", body="hi")]),
        "NotifyOrder": pb.NotifyOrderRequest(
            order_id="A-1",
            customer_name="Ana",
            customer_email="ana@example.com",
            items=[pb.OrderItem(title="Mug", quantity=2, unit_price="12.50")],
            total="25.00",
            currency="USD",
        ),
        "NotifyAdmins": pb.NotifyAdminsRequest(
            custom=pb.CustomNotification(title="Hi", body="there"), idempotency_key="n-1"
        ),
        "GetDeliveryStatus": pb.GetDeliveryStatusRequest(message_id=first),
        "GetMetrics": pb.GetMetricsRequest(),
        "ListMessages": pb.ListMessagesRequest(page_size=5),
        "RetryMessages": pb.RetryMessagesRequest(message_ids=[first]),
        "CancelMessage": pb.CancelMessageRequest(message_id=first),
        "WatchDeliveryStatus": pb.WatchDeliveryStatusRequest(message_ids=[first]),
        "EraseRecipient": pb.EraseRecipientRequest(to="+14155550199"),  # not the seeds'
    }[name]


@st.composite
def near_valid(draw: st.DrawFn, name: str) -> Message:
    """A valid request with one to three of its fields replaced by fuzzed values."""
    msg = _valid(name)
    fuzzed = draw(messages(msg.DESCRIPTOR))
    present = fuzzed.ListFields()
    if not present:
        return msg
    chosen = draw(st.lists(st.sampled_from(present), min_size=1, max_size=3))
    for field, value in chosen:
        if field.is_repeated:  # maps included
            msg.ClearField(field.name)
            getattr(msg, field.name).MergeFrom(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(value)
        else:
            setattr(msg, field.name, value)
    return msg


def test_every_rpc_has_a_valid_request_to_mutate() -> None:
    """The RPCs come from the proto, so a new one is fuzzed at once; this says which
    valid request its near-valid mutations should start from."""
    for name in METHODS:
        assert _valid(name).DESCRIPTOR is METHODS[name].input_type, name


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, Path]]:
    db_path = tmp_path_factory.mktemp("fuzz") / "notifier.db"
    settings = load_settings(
        NOTIFIER_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        ADMIN_WHATSAPP_NUMBERS=ADMIN,
        NOTIFIER_LOG_LEVEL="WARNING",
    )
    loop = LoopThread()
    server: NotifierServer = loop.run(create_server(settings))
    loop.run(server.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        seed = GetMessageClass(METHODS["SendMessage"].input_type)
        send = _unary(channel, "SendMessage")
        for i in range(4):
            req = seed(to="+14155550100", body=f"seed {i}", idempotency_key=f"seed-{i}")
            reply = pb.SendMessageResponse.FromString(send(req.SerializeToString(), timeout=10))
            SEEDED.append(reply.message_id)
        SEEDED.extend(["seed-0", "SM" + "0" * 32])
        yield channel, db_path
    finally:
        print("\nanswers to fuzzed requests:")
        for (method, code), n in sorted(SEEN.items()):
            print(f"  {method:20} {code:20} {n}")
        channel.close()
        loop.run(server.stop(grace=1))
        loop.close()


def _path(name: str) -> str:
    return f"/{SERVICE.full_name}/{name}"


def _unary(channel: grpc.Channel, name: str) -> Callable[..., bytes]:
    return channel.unary_unary(
        _path(name), request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def _call(
    channel: grpc.Channel, name: str, requests: list[bytes]
) -> tuple[grpc.StatusCode, str, int]:
    """Send raw request bytes to ``name``: the status code, its details, and how many
    items were accepted as new messages (SendBulk; 0 for the others)."""
    method = METHODS[name]
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    accepted = 0
    try:
        if method.client_streaming:
            bulk = channel.stream_stream(_path(name), **identity)
            for raw in bulk(iter(requests), timeout=30):
                for result in pb.SendBulkResponse.FromString(raw).results:
                    if result.HasField("accepted") and not result.accepted.replayed:
                        accepted += 1
        elif method.server_streaming:
            # A valid watch never ends by itself: the short deadline ends it.
            watch = channel.unary_stream(_path(name), **identity)
            for _ in watch(requests[0], timeout=0.1):
                pass
        else:
            _unary(channel, name)(requests[0], timeout=30)
    except grpc.RpcError as err:
        code: grpc.StatusCode = err.code()
        if method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK, "", 0
        return code, err.details() or "", accepted
    return grpc.StatusCode.OK, "", accepted


def _check(channel: grpc.Channel, db_path: Path, name: str, requests: list[bytes]) -> None:
    before = table_counts(db_path)
    code, text, accepted = _call(channel, name, requests)
    after = table_counts(db_path)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), f"{name}: {text}"
    assert "Traceback" not in text
    SEEN[name, code.name] += 1
    too_large = any(len(r) > MAX_REQUEST for r in requests)
    assert (
        code in DOCUMENTED
        or (code == grpc.StatusCode.UNIMPLEMENTED and name == "SendMessage")
        or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and too_large)
    ), f"{name} answered {code}"
    if name == "SendBulk":
        # Each new message belongs to an item the stream reported as accepted, except
        # when the transport broke the stream (a request over gRPC's size limit): the
        # items of the requests before it may be committed with their results still on
        # the way, as with any stream cut short. A caller resends those with the same
        # idempotency keys.
        unreported = 0
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and too_large:
            first_too_large = next(i for i, r in enumerate(requests) if len(r) > MAX_REQUEST)
            unreported = sum(
                len(pb.SendBulkRequest.FromString(r).items) for r in requests[:first_too_large]
            )
        assert after["messages"] - before["messages"] <= accepted + unreported
    elif code != grpc.StatusCode.OK:
        assert after == before, f"{name} refused with {code} but stored rows"


def _fuzz(name: str) -> settings:
    # The slow ones (a watch waits for its deadline, bulk items are many) get fewer
    # examples, so the module stays near 20 s on a busy 2-core machine.
    examples = EXAMPLES // 2 if name in ("SendBulk", "WatchDeliveryStatus") else EXAMPLES
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@pytest.mark.parametrize("name", sorted(METHODS))
def test_random_fields_get_a_documented_code(served: tuple[grpc.Channel, Path], name: str) -> None:
    channel, db_path = served
    desc = METHODS[name].input_type
    one = st.one_of(messages(desc), near_valid(name))
    batch = st.lists(one, min_size=1, max_size=3 if METHODS[name].client_streaming else 1)

    @_fuzz(name)
    @given(requests=batch)
    def fuzz(requests: list[Message]) -> None:
        _check(channel, db_path, name, [m.SerializeToString() for m in requests])

    fuzz()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_random_bytes_get_a_documented_code(served: tuple[grpc.Channel, Path], name: str) -> None:
    channel, db_path = served
    size = 3 if METHODS[name].client_streaming else 1

    @_fuzz(name)
    @given(raw=st.lists(st.binary(max_size=200), min_size=1, max_size=size))
    def fuzz(raw: list[bytes]) -> None:
        _check(channel, db_path, name, raw)

    fuzz()


async def test_out_of_range_times_are_invalid_argument(stub: Stub, db_path: Path) -> None:
    """Found by the fuzzer: a Timestamp or Duration outside protobuf's range (here year
    ~10^11, a validity of 10^12 s) raised ValueError in conversion and came back INTERNAL."""
    far = timestamp_pb2.Timestamp(seconds=2**40)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x", send_at=far))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send_at" in field_violations(info.value)
    long = duration_pb2.Duration(seconds=10**12)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x", validity=long))
    assert "validity" in field_violations(info.value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetMetrics(pb.GetMetricsRequest(start_time=far))
    assert "start_time" in field_violations(info.value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListMessages(pb.ListMessagesRequest(filter=pb.MessageFilter(created_before=far)))
    assert "filter.created_before" in field_violations(info.value)
    booking = pb.BookingNotification(booking_id="b1", item="Table", starts_at=far)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.NotifyAdmins(pb.NotifyAdminsRequest(booking=booking))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count_rows(db_path, "messages") == 0


async def test_huge_echoed_input_still_gets_its_own_code(stub: Stub) -> None:
    """Found by the fuzzer: the error echoed a 100,000-character id into the trailers,
    past the client's 16 KiB metadata limit, so the caller saw RESOURCE_EXHAUSTED
    "Stream removed" instead of NOT_FOUND; 600 bad tags did the same to INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetDeliveryStatus(pb.GetDeliveryStatusRequest(message_id="x" * 100_000))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SendMessage(pb.SendMessageRequest(to="+14155550100", body="x", tags=[""] * 600))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = field_violations(info.value)
    assert "tags[0]" in found
    assert "more violation(s) not shown" in found["request"]


async def test_bulk_replies_fit_the_client_limit(stub: Stub, db_path: Path) -> None:
    """Found by the fuzzer: 600 items under defaults with 600 empty media URLs is a 2 KB
    request whose per-item violations made a ~20 MB reply, over the 4 MiB a client takes."""
    request = pb.SendBulkRequest(
        defaults=pb.BulkContent(media_urls=[""] * 600), items=[pb.BulkItem()] * 600
    )
    results: list[pb.BulkItemResult] = []
    async for reply in stub.SendBulk(iter([request])):
        assert reply.ByteSize() < 4 * 1024 * 1024
        results.extend(reply.results)
    assert [r.index for r in results] == list(range(600))
    assert all(r.error.code == "INVALID_ARGUMENT" for r in results)
    assert "more violation(s) not shown" in results[0].error.violations[-1].description
    assert count_rows(db_path, "messages") == 0
