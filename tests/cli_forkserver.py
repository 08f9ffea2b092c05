"""A fork server for the process-level failure tests: import embedcache (and torch) once, fork one child per command.

Each `embedcache ...` command runs in its own forked OS process, which the test can SIGKILL like any other; only
the interpreter start-up (seconds of imports) is shared. Nothing but imports runs before a fork, so no thread
(zarr's event loop, torch's pools) exists to be lost in the child.

Protocol, one JSON object per line on stdin, one reply line on stdout:
    {"op": "run", "args": [...], "env": {...}, "stdout": path, "stderr": path}  -> {"pid": int}
    {"op": "poll", "pid": int}  -> {"returncode": int | null}
    {"op": "wait", "pid": int}  -> {"returncode": int}
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")

import embedcache.extract  # noqa: E402,F401  (the expensive imports, paid once)
from embedcache_cli.main import main  # noqa: E402


def _child(request: dict) -> None:
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(request.get("env", {}))
    code = 0
    try:
        main(args=request["args"], prog_name="embedcache")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reply(value: dict) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            _reply({"pid": pid})
        elif request["op"] == "poll":
            pid, status = os.waitpid(request["pid"], os.WNOHANG)
            _reply({"returncode": None if pid == 0 else os.waitstatus_to_exitcode(status)})
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            _reply({"returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
