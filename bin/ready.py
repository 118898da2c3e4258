"""Say where kb is, and the first admin's password, once the web app answers (the Procfile's ready line).

`make run` used to print the address and the new password before honcho started, so they
scrolled away above the services' start-up output. This waits until the web app answers its
sign-in page, then prints one line:

    kb is ready: http://127.0.0.1:8000/  user admin, password …

The password comes from the file `manage.py kb_bootstrap --defer-password` keeps in var/ (mode
0600) when it creates the admin; it is shown on that first run only (the file is marked), and
kb_bootstrap removes the file once the admin's password has been changed. Later runs print only
the address. Then this sleeps: honcho stops everything when any of its processes exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGIN_FILE = "first-admin-login.json"  # the name kb_bootstrap writes


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def take_login(path: Path) -> dict | None:
    """The first admin's login if it has not been shown yet; marks it shown."""
    try:
        login = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if login.get("announced"):
        return None
    login["announced"] = True
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(login, f)
    os.replace(tmp, path)
    return login


def ready_line(base: str, login: dict | None) -> str:
    line = f"kb is ready: {base}"
    if login:
        password = login.get("password") or "(from KB_ADMIN_PASSWORD)"
        line += f"  user {login['username']}, password {password}"
        line += f"\n  (shown this once: change it at {base}account/password/)"
    return line + "\n  Ctrl-C stops everything."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = os.environ.get("KB_PORT") or "8000"
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/", help="kb's address")
    var = Path(os.environ.get("KB_VAR_DIR") or ROOT / "var")
    parser.add_argument("--login-file", type=Path, default=var / LOGIN_FILE)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    base = args.url.rstrip("/") + "/"

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while not answers(base + "login/"):
            time.sleep(0.5)
        print(ready_line(base, take_login(args.login_file)), flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
