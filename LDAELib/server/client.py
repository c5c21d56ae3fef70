"""Start, talk to and stop the LDAE worker process. Plain Python: no Qt, no MRML, no torch.

    client = WorkerClient(model_path, python=sys.executable)
    info = client.start()                        # waits for the worker's "ready" message
    rid = client.submit({"op": "edit", ...})
    final = client.wait(rid, on_message=print)   # blocking; a GUI calls client.poll() from a timer
    client.close()

One reader thread per pipe moves lines into a queue; it never calls anything but the queue, so the
GUI thread (a QTimer in Slicer) is the only one that looks at messages and touches the scene.
``kill()`` ends the whole process tree (``PythonSlicer`` is a launcher with a child): the worker
runs in its own session / process group, ended with ``os.killpg`` on POSIX and ``taskkill /T /F``
on Windows.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import protocol

LIB_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the LDAELib package (put on the worker's PYTHONPATH)."""


class WorkerError(RuntimeError):
    """The worker could not be started, or stopped unexpectedly."""


class WorkerClient:
    """One worker process for one model.

    Args:
        model_path: bundle folder or folder of the authors' files.
        python: the interpreter to run the worker with (``PythonSlicer`` inside Slicer; default the
            current one).
        device, dtype, threads: passed to the worker (``device="auto"`` picks CUDA when present).
        decode_dtype: the decoder's precision: "float32" (the authors' numbers) or "auto" (bfloat16
            where the device computes it natively: faster decodes, within SSIM 0.999).
        env: extra environment variables for the worker.
        cache_dir: keep encodings on disk in this folder (``--cache-dir``; off when None).
    """

    def __init__(self, model_path: str | os.PathLike, *, python: str | None = None, device: str = "auto", dtype: str = "float32",
                 decode_dtype: str = "float32",
                 threads: int | None = None, env: dict | None = None, verify: bool = True, cache_dir: str | os.PathLike | None = None) -> None:
        self.model_path = str(model_path)
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.python = python or sys.executable
        self.device, self.dtype, self.threads, self.verify = device, dtype, threads, verify
        self.decode_dtype = decode_dtype
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.info: dict | None = None
        self._messages: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque = collections.deque(maxlen=60)
        self._ids = itertools.count(1)
        self._pending: dict[int, dict] = {}
        self._backlog: list[dict] = []  # messages read while waiting for "ready", given out by the next poll

    # ------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        cmd = [self.python, "-u", "-m", "LDAELib.server.worker", "--model", self.model_path, "--device", self.device, "--dtype", self.dtype]
        if self.decode_dtype != "float32":
            cmd += ["--decode-dtype", self.decode_dtype]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if not self.verify:
            cmd.append("--no-verify")
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        return cmd

    def _env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(LIB_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONIOENCODING"] = "utf-8"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 900.0) -> dict | None:
        """Start the worker; with ``wait`` block until it reports ready and return its info.

        Raises WorkerError with the worker's message when loading fails (bad model folder…).
        """
        if self.running:
            return self.info
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: killpg ends the launcher and its children
        self._messages = queue.Queue()
        self._pending.clear()
        self._backlog = []
        self.info = None
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=self._env(), cwd=str(LIB_ROOT), text=True, encoding="utf-8", errors="replace",
                                         bufsize=1, **kwargs)
        except OSError as err:
            raise WorkerError(f"could not start the LDAE worker with {self.python}: {err}") from None
        # Each reader gets this process's own queue: a killed predecessor's late "exit" cannot reach it.
        # The stdout reader waits for the stderr reader before it reports the exit, so the exit's
        # message holds the whole stderr tail (a worker dying while loading says why: issue #16).
        stderr_reader = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True, name="ldae-worker-stderr")
        stderr_reader.start()
        threading.Thread(target=self._read_stdout, args=(self.proc, self._messages, stderr_reader), daemon=True,
                         name="ldae-worker-stdout").start()
        if wait:
            return self.wait_ready(timeout)
        return None

    def wait_ready(self, timeout: float = 900.0, idle: Callable[[], None] | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while self.info is None:
            for msg in self.poll(0.05 if idle is None else 0.0):
                if msg.get("type") == "error" and msg.get("id") is None and msg.get("kind") != "protocol":
                    self.kill()
                    raise WorkerError(msg.get("message", "the LDAE worker failed to start"))
                if msg.get("type") == "exit":
                    raise WorkerError(self._exit_text(msg))
                if msg.get("type") != "ready":
                    self._backlog.append(msg)
            if self.info is not None:
                break
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerError(f"the LDAE worker did not become ready within {timeout:.0f} s")
            if idle is not None:
                idle()
                time.sleep(0.02)
        return self.info

    def _read_stdout(self, proc: subprocess.Popen, messages: queue.Queue, stderr_reader: threading.Thread | None = None) -> None:
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                msg = protocol.loads(line)
            except ValueError:
                self._stderr_tail.append(f"[stdout] {line}")
                continue
            messages.put(msg)
        rc = proc.wait()
        if stderr_reader is not None:
            stderr_reader.join(timeout=5.0)  # the tail is complete before the exit is reported
        messages.put({"type": "exit", "returncode": rc})

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:  # drained so the worker never blocks on a full pipe
            self._stderr_tail.append(line.rstrip())

    def stderr_tail(self, n: int = 20) -> str:
        return "\n".join(list(self._stderr_tail)[-n:])

    def _exit_text(self, msg: dict) -> str:
        tail = self.stderr_tail(8)
        return f"the LDAE worker stopped unexpectedly (exit code {msg.get('returncode')})" + (f":\n{tail}" if tail else "")

    # ------------------------------------------------------------------ requests
    def submit(self, request: dict) -> int:
        """Send a request (an ``id`` is added) and return its id."""
        if not self.running:
            raise WorkerError("the LDAE worker is not running")
        rid = next(self._ids)
        msg = dict(request, id=rid)
        self._pending[rid] = msg
        self._send(msg)
        return rid

    def _send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(protocol.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as err:
            raise WorkerError(f"the LDAE worker is not accepting requests ({err}); it is restarted on the next run") from None

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Messages received so far (waits up to ``timeout`` s for the first). Never blocks longer.

        When the process has ended, an ``error`` message is made for each request still pending,
        then one ``{"type": "exit"}``.
        """
        if self._backlog:
            out, self._backlog = self._backlog, []
            return out
        out = []
        try:
            out.append(self._messages.get(timeout=timeout) if timeout > 0 else self._messages.get_nowait())
            while True:
                out.append(self._messages.get_nowait())
        except queue.Empty:
            pass
        result = []
        for msg in out:
            t = msg.get("type")
            if t == "ready":
                self.info = msg
            if t in protocol.FINAL_TYPES:
                self._pending.pop(msg.get("id"), None)
            if t == "exit":
                msg.setdefault("message", self._exit_text(msg))  # exit code and stderr tail, for the panel
                for rid in list(self._pending):
                    result.append({"type": "error", "id": rid, "kind": "WorkerExit", "message": self._exit_text(msg)})
                self._pending.clear()
            result.append(msg)
        return result

    def wait(self, request_id: int, on_message: Callable[[dict], None] | None = None, timeout: float | None = None,
             idle: Callable[[], None] | None = None) -> dict:
        """Block until request ``request_id`` ends; returns its final message (result/error/cancelled).

        Messages of other requests are passed to ``on_message`` too. ``idle`` is called between polls
        (e.g. ``slicer.app.processEvents`` so the application repaints while a script waits).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for msg in self.poll(0.05 if idle is None else 0.0):
                if on_message is not None:
                    on_message(msg)
                if msg.get("id") == request_id and msg.get("type") in protocol.FINAL_TYPES:
                    return msg
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"request {request_id} did not finish within {timeout} s")
            if idle is not None:
                idle()
                time.sleep(0.02)

    def cancel(self, request_id: int | None = None) -> None:
        """Ask the worker to stop a request at its next network call (it stays warm)."""
        if self.running:
            try:
                self._send({"op": "cancel", "id": request_id})
            except WorkerError:
                pass

    # ------------------------------------------------------------------ ending
    def kill(self) -> None:
        """End the worker and everything it started, now. Pending requests end with an error."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            kill_process_tree(proc)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (proc.stdin,):
            try:
                stream.close()
            except OSError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill its process tree if it has not within ``timeout`` s."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._send({"op": "shutdown"})
                proc.stdin.close()
            except (WorkerError, OSError):
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> "WorkerClient":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and all its descendants (it was started in a new session / process group)."""
    if os.name == "nt":
        # CREATE_NO_WINDOW: taskkill is a console program; without it a console window flashes up.
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000))
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
