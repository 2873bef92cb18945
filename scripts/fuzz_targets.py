"""Coverage-guided fuzz targets (atheris / libFuzzer) for the frame decoder, the CONNECT /
CONNECTED handshake and the control socket's request parser.

    .venv/bin/python scripts/fuzz_targets.py decoder|connect|control [libFuzzer options]
    e.g. scripts/fuzz_targets.py decoder -max_total_time=600 /tmp/corpus/decoder

The properties are those of tests/unit/test_fuzz.py (imported from there, so both check
the same thing): any exception or failed assertion is a crash; libFuzzer saves the input
as crash-<sha1> in the working directory. Turn it into a named example test at the end
of tests/unit/test_fuzz.py. scripts/fuzz.sh runs every target for a given time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "unit"), str(ROOT / "tests"), str(ROOT / "agent")]

with atheris.instrument_imports(include=["macula"]):
    import macula.control.server  # noqa: F401
    import macula.identity.binding  # noqa: F401
    import macula.transport.handshake  # noqa: F401
    import macula.transport.session  # noqa: F401
    import macula.wire  # noqa: F401

from macula.errors import ErrorCode, ProtocolError  # noqa: E402
from macula.wire import FrameDecoder, MsgType  # noqa: E402
from macula.wire.codec import refusal_table  # noqa: E402

import test_fuzz as props  # noqa: E402

MAX_FRAME = props.MAX_FRAME


def _chunks(fdp: atheris.FuzzedDataProvider, data: bytes) -> list[bytes]:
    cuts = [fdp.ConsumeIntInRange(0, max(len(data), 1)) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    return props._chunks(data, cuts)


_HANDSHAKE_REFUSE = refusal_table((MsgType.CONNECT, MsgType.CONNECTED, MsgType.ERROR),
                                  lambda t: ProtocolError("refused", code=ErrorCode.NOT_CONNECTED))


def decoder(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 3:  # a valid frame in front, so the fuzzer reaches bodies quickly
        body = props.VALID[len(body) % len(props.VALID)] + body
    dec = FrameDecoder(MAX_FRAME, _HANDSHAKE_REFUSE if mode == 1 else None)
    fdp2 = atheris.FuzzedDataProvider(data[:16])
    props._feed_all(dec, _chunks(fdp2, body), end=mode != 2)


_hs = None


def connect(data: bytes) -> None:
    global _hs
    if _hs is None:
        _hs = props._Handshake()
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    dialer = bool(mode & 1)
    template = _hs.connected if dialer else _hs.connect
    if mode < 2:  # the real frame, with bytes overwritten where the input says
        frame = bytearray(template)
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            frame[fdp.ConsumeIntInRange(0, len(frame) - 1)] = fdp.ConsumeInt(1) & 0xFF
        frame = bytes(frame) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    else:  # raw input as the first frames
        frame = fdp.ConsumeBytes(fdp.remaining_bytes())
    s = _hs.accept(frame, dialer=dialer)
    props._assert_outcome(_hs, s, dialer)


_control = None


def control(data: bytes) -> None:
    global _control
    if _control is None:
        import asyncio
        import tempfile

        from macula.control.server import ControlServer

        _control = (asyncio.new_event_loop(),
                    ControlServer(props._Node(), Path(tempfile.mkdtemp())))
    loop, server = _control
    reply = loop.run_until_complete(server._handle(data + b"\n"))
    props._check_reply(reply)


TARGETS = {"decoder": decoder, "connect": connect, "control": control}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
