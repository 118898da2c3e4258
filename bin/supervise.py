"""Keep one server process running: start it again whenever it exits, after a growing pause.

`make run` runs the local model server under this loop (Makefile: llm-supervised, called by the
Procfile's llm line). honcho stops every process as soon as one exits, so a crashed or killed
llama.cpp server used to take the web app, the worker and the database down with it. Under this
loop only the model server goes away, for a few seconds; the site says so in its banner and
still shows the passages it finds.

The child's own output (llama.cpp prints about 2,000 lines while it loads) goes to --log; this
loop prints one line when the child starts and one when it exits, saying why and how often.

Why not a library: honcho has no restart policy, and supervisord or circus are process managers
of their own (a daemon, a configuration file, their own log handling) that would sit under
honcho as a second manager for a single process. What kb needs fits in the standard library:
start, wait, pause, start again, and pass a stop on to the child.

    python bin/supervise.py --name "model server" --log var/log/llm.log -- CMD [ARG...]
"""

from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

ROTATE_BYTES = 20 * 1024 * 1024  # a log past this is moved to LOG.1 before the next start
WINDOW = 600.0  # "restarts in the last 10 minutes"


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    if returncode == 0:
        return "exited"
    return f"exited with status {returncode}"


def tail(path: Path, lines: int = 5) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.name
        self.cmd: list[str] = args.cmd
        self.log = Path(args.log)
        self.min_delay: float = args.min_delay
        self.max_delay: float = args.max_delay
        self.stable: float = args.stable
        self.grace: float = args.grace
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.stop_deadline = 0.0

    def say(self, text: str) -> None:
        print(text, flush=True)

    def on_signal(self, signum: int, _frame) -> None:
        # Only flags and a forwarded signal here; the main loop does the waiting.
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.grace
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def start(self) -> subprocess.Popen:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.log.exists() and self.log.stat().st_size > ROTATE_BYTES:
            self.log.replace(self.log.with_name(self.log.name + ".1"))
        with self.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.cmd)}\n".encode())
            out.flush()
            # Same process group as this loop: honcho's SIGTERM and SIGKILL to the group reach the
            # child even if this loop is gone.
            return subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, child: subprocess.Popen) -> int:
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if self.stopping and time.monotonic() > self.stop_deadline:
                    child.kill()

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < until:
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def run(self) -> int:
        exits: collections.deque[float] = collections.deque()
        delay = self.min_delay
        restarts = 0
        while not self.stopping:
            started = time.monotonic()
            self.child = self.start()
            if restarts == 0:
                self.say(f"started the {self.name} (pid {self.child.pid}); its output goes to {self.log}")
            else:
                self.say(f"restarted the {self.name} (pid {self.child.pid}), restart {restarts}")
            if self.stopping:  # a stop that arrived while starting
                self.child.send_signal(signal.SIGTERM)
            returncode = self.wait(self.child)
            if self.stopping:
                break
            now = time.monotonic()
            ran = now - started
            if ran >= self.stable:
                delay = self.min_delay  # it had been running well: this is a new incident
            exits.append(now)
            while exits and now - exits[0] > WINDOW:
                exits.popleft()
            restarts += 1
            self.say(
                f"the {self.name} {describe(returncode)} after {ran:.0f} s; starting it again in {delay:g} s "
                f"({len(exits)} exit{'s' if len(exits) != 1 else ''} in the last {WINDOW / 60:.0f} minutes; "
                f"its log: {self.log})"
            )
            if returncode > 0:
                for line in tail(self.log):
                    self.say(f"  | {line}")
            self.pause(delay)
            delay = min(delay * 2, self.max_delay)
        self.say(f"stopped the {self.name}")
        return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Restart a server process whenever it exits.")
    parser.add_argument("--name", default="server", help="what to call it in messages")
    parser.add_argument("--log", required=True, help="file that receives the child's output (appended)")
    parser.add_argument("--min-delay", type=float, default=1.0, help="first pause before a restart, seconds")
    parser.add_argument("--max-delay", type=float, default=60.0, help="longest pause; each quick exit doubles it")
    parser.add_argument("--stable", type=float, default=60.0, help="a run this long resets the pause")
    parser.add_argument("--grace", type=float, default=4.0, help="seconds between SIGTERM and SIGKILL on stop")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    if args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("give the command to run after --")
    return args


def main(argv: list[str] | None = None) -> int:
    supervisor = Supervisor(parse(sys.argv[1:] if argv is None else argv))
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
