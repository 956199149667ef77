"""A TCP proxy that can cut the network between a client and a service.

    with CuttableProxy("127.0.0.1", upstream_port) as p:
        p.cut(); p.restore(); p.drop_connections()
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
import time

from tests.support.cleanup import Managed, register, unregister
from tests.support.ports import LOOPBACK, free_port


def _reset(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    BUF_LIMIT = 1 << 20

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.socks = {"c": client, "u": upstream}
        self.buf = {"c": bytearray(), "u": bytearray()}      # bytes waiting to be written TO that side
        self.eof = {"c": False, "u": False}                   # that side sent FIN
        self.shut = {"c": False, "u": False}                  # we sent FIN to that side
        self.registered = {"c": 0, "u": 0}


class CuttableProxy(Managed):
    """A TCP proxy on ``host:port`` forwarding to ``upstream_host:upstream_port``.

    ``cut()``: stop listening (new connections are refused) and reset every
    open connection on both sides.  ``restore()``: listen again on the same
    port.  ``drop_connections()``: reset the open connections, keep listening.
    One event-loop thread does all socket I/O (non-blocking), so a cut never
    waits for a blocked send/recv."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None, host: str = LOOPBACK,
                 connect_timeout: float = 5.0):
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self.port = port or free_port(host)
        self.connect_timeout = connect_timeout
        self._thread: threading.Thread | None = None
        self._cmds: queue.Queue = queue.Queue()
        self._wake_r = self._wake_w = None
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._listening = False
        self.accepted = 0
        self.errors: list[str] = []

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def is_cut(self) -> bool:
        return not self._listening

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    # public API -----------------------------------------------------------
    def start(self) -> CuttableProxy:
        if self.running:
            return self
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=f"CuttableProxy:{self.port}", daemon=True)
        self._thread.start()
        register(self)
        self.restore()
        return self

    def restore(self) -> None:
        """Listen again on the same port (no-op if listening)."""
        if self._listening:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                ls.bind((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    ls.close()
                    raise
                time.sleep(0.1)
        ls.listen(128)
        ls.setblocking(False)
        self._call("listen", ls)

    def cut(self) -> None:
        """Refuse new connections and reset all open ones (both directions)."""
        self._call("cut")

    def drop_connections(self) -> None:
        """Reset all open connections but keep accepting new ones."""
        self._call("drop")

    def stop(self) -> None:
        if self.running:
            self._call("stop")
            self._thread.join(10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            self._wake_r = self._wake_w = None
            unregister(self)

    # event loop -------------------------------------------------------------
    def _call(self, op: str, arg=None, timeout: float = 30.0) -> None:
        if not self.running:
            if op == "listen":
                arg.close()
            if op in ("stop",):
                return
            raise RuntimeError("proxy is not running")
        done = threading.Event()
        self._cmds.put((op, arg, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"proxy {op} did not complete")

    def _loop(self) -> None:
        try:
            while True:
                for key, mask in self._sel.select(timeout=1.0):
                    data = key.data
                    if data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        while not self._cmds.empty():
                            op, arg, done = self._cmds.get_nowait()
                            try:
                                if self._command(op, arg):
                                    return
                            finally:
                                done.set()
                    elif data == "listen":
                        self._accept()
                    else:
                        conn, side = data
                        if conn in self._conns:
                            try:
                                self._io(conn, side, mask)
                            except OSError:
                                self._abort(conn)
        except Exception as e:  # keep a record; never hang callers
            self.errors.append(repr(e))
        finally:
            self._close_listener()
            for c in list(self._conns):
                self._abort(c)
            # release anybody still waiting
            while not self._cmds.empty():
                with contextlib.suppress(queue.Empty):
                    op, arg, done = self._cmds.get_nowait()
                    if op == "listen":
                        arg.close()
                    done.set()
            self._sel.close()

    def _command(self, op: str, arg) -> bool:
        if op == "listen":
            self._close_listener()
            self._listener = arg
            self._sel.register(arg, selectors.EVENT_READ, "listen")
            self._listening = True
        elif op == "cut":
            self._close_listener()
            for c in list(self._conns):
                self._abort(c)
        elif op == "drop":
            for c in list(self._conns):
                self._abort(c)
        elif op == "stop":
            return True
        return False

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._sel.unregister(self._listener)
            with contextlib.suppress(OSError):
                self._listener.close()  # also RSTs connections still in the accept queue
            self._listener = None
        self._listening = False

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.errors.append(f"accept: {e!r}")
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                _reset(client)  # upstream down: the client sees a reset
                continue
            for s in (client, upstream):
                s.setblocking(False)
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            self._conns.add(conn)
            self._update(conn)

    @staticmethod
    def _other(side: str) -> str:
        return "u" if side == "c" else "c"

    def _io(self, conn: _Conn, side: str, mask: int) -> None:
        s, other = conn.socks[side], self._other(side)
        if mask & selectors.EVENT_READ:
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by that side: pass the reset on
                self._abort(conn)
                return
            if data:
                conn.buf[other] += data
            elif data == b"":
                conn.eof[side] = True
        if mask & selectors.EVENT_WRITE and conn.buf[side]:
            try:
                n = s.send(conn.buf[side])
                del conn.buf[side][:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._abort(conn)
                return
        # half-close: forward a FIN once everything before it is delivered
        for sd in ("c", "u"):
            src = self._other(sd)
            if conn.eof[src] and not conn.buf[sd] and not conn.shut[sd]:
                with contextlib.suppress(OSError):
                    conn.socks[sd].shutdown(socket.SHUT_WR)
                conn.shut[sd] = True
        if conn.shut["c"] and conn.shut["u"]:
            self._finish(conn)
            return
        self._update(conn)

    def _update(self, conn: _Conn) -> None:
        for side in ("c", "u"):
            other = self._other(side)
            ev = 0
            if not conn.eof[side] and len(conn.buf[other]) < _Conn.BUF_LIMIT:
                ev |= selectors.EVENT_READ
            if conn.buf[side]:
                ev |= selectors.EVENT_WRITE
            s, cur = conn.socks[side], conn.registered[side]
            if ev == cur:
                continue
            if cur and ev:
                self._sel.modify(s, ev, (conn, side))
            elif ev:
                self._sel.register(s, ev, (conn, side))
            else:
                self._sel.unregister(s)
            conn.registered[side] = ev

    def _unregister_conn(self, conn: _Conn) -> None:
        for side in ("c", "u"):
            if conn.registered[side]:
                with contextlib.suppress(Exception):
                    self._sel.unregister(conn.socks[side])
                conn.registered[side] = 0
        self._conns.discard(conn)

    def _abort(self, conn: _Conn) -> None:
        self._unregister_conn(conn)
        _reset(conn.socks["c"])
        _reset(conn.socks["u"])

    def _finish(self, conn: _Conn) -> None:
        self._unregister_conn(conn)
        for s in conn.socks.values():
            with contextlib.suppress(OSError):
                s.close()
