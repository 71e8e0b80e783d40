#!/usr/bin/env python3
"""A small client of ward's control socket, standard library only.

The protocol is PROTOCOL.md's at the repository's root: one line of JSON per request, one per
reply, on the Unix socket ``ward.sock`` in ward's state directory. This module gives it to a
Python program, and runs as a command::

    python3 ward_client.py --state-dir .ward status
    python3 ward_client.py --state-dir .ward follow [--since SEQ] [--glob GLOB]...

``follow`` prints each change as a JSON line as ward records it, and subscribes again from the
last sequence number it printed when the server restarts: nothing is lost, nothing repeats.

As a library::

    import ward_client
    print(ward_client.request(".ward", "status")["queue"])
    for change in ward_client.follow(".ward", since=0, globs=["*.py"]):
        print(change["seq"], change["event"], change["path"])
"""

import argparse
import json
import os
import socket
import sys
import time

#: The protocol version this client speaks.
VERSION = 1
#: How long ``follow`` tries to subscribe again after the connection ends.
RECONNECT_FOR = 60.0


class Refused(Exception):
    """The server answered ``ok: false``; the message is its error."""


def connect(state_dir):
    """A connected socket to the control socket in ``state_dir``.

    A socket address holds at most 107 bytes of path; a deeper state directory is reached
    through ``/proc/self/fd``, as ward itself does.
    """
    path = os.path.join(state_dir, "ward.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(path)) < 108:
            sock.connect(path)
        else:
            fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY)
            try:
                sock.connect("/proc/self/fd/%d/ward.sock" % fd)
            finally:
                os.close(fd)
    except OSError:
        sock.close()
        raise
    return sock


def _line(cmd, fields):
    request = dict(fields, v=VERSION, cmd=cmd)
    return (json.dumps(request) + "\n").encode()


def _reply(line):
    reply = json.loads(line)
    if not reply.get("ok"):
        raise Refused(reply.get("error", "refused without a reason"))
    return reply


def request(state_dir, cmd, timeout=10.0, **fields):
    """Sends one request (``status``, ``changes``, ``failures``, ...) and returns its reply."""
    with connect(state_dir) as sock:
        sock.settimeout(timeout)
        sock.sendall(_line(cmd, fields))
        with sock.makefile("rb") as reader:
            line = reader.readline()
    if not line:
        raise ConnectionError("the server closed the connection without a reply")
    return _reply(line)


def follow(state_dir, since=0, globs=(), reconnect_for=RECONNECT_FOR):
    """Yields each change recorded after ``since`` as a dict (``seq``, ``path``, ``event``),
    as ward records it, forever; and ``{"resync_from": SEQ}`` when the reader fell far behind
    (what follows comes from the manifest: each path changed meanwhile once, at its latest).

    When the connection ends (the server restarts), it subscribes again from the last ``seq``
    it yielded, for up to ``reconnect_for`` seconds; then the last error is raised.
    """
    lost_at = None
    while True:
        try:
            sock = connect(state_dir)
        except OSError:
            lost_at = lost_at or time.monotonic()
            if time.monotonic() - lost_at > reconnect_for:
                raise
            time.sleep(0.1)
            continue
        with sock, sock.makefile("rb") as reader:
            fields = {"since": since}
            if globs:
                fields["globs"] = list(globs)
            sock.sendall(_line("subscribe", fields))
            first = reader.readline()
            if not first:
                time.sleep(0.1)
                continue
            _reply(first)
            lost_at = None
            for line in reader:
                change = json.loads(line)
                if "seq" in change:
                    since = max(since, change["seq"])
                yield change
        lost_at = lost_at or time.monotonic()


def main(argv=None):
    parser = argparse.ArgumentParser(description="A client of ward's control socket.")
    parser.add_argument("--state-dir", default=".ward", help="ward's state directory")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print the server's status as JSON")
    following = commands.add_parser("follow", help="print changes as they are recorded")
    following.add_argument("--since", type=int, default=0)
    following.add_argument("--glob", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            print(json.dumps(request(args.state_dir, "status"), indent=1))
        else:
            for change in follow(args.state_dir, args.since, args.glob):
                print(json.dumps(change), flush=True)
    except (Refused, OSError) as e:
        print("ward_client: %s" % e, file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
