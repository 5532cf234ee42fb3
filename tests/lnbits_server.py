"""A real LNbits (PyPI lnbits, FakeWallet funding source, SQLite) on a loopback port, for the tests.

LNbits pins libraries the Workshop can't share (SQLAlchemy 1.4, pydantic 1), so it lives in its own
virtualenv: TEST_LNBITS_PYTHON names its Python, else the repository's .venv-lnbits is used (.ci/run
makes it). It must start from a folder where lnbits/static resolves, and is stopped by process group.
"""
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "workshop-" + secrets.token_hex(8)


def lnbits_python():
    """Return the Python that has lnbits installed, or None."""
    named = os.environ.get("TEST_LNBITS_PYTHON")
    candidate = Path(named) if named else ROOT / ".venv-lnbits" / "bin" / "python"
    return candidate if candidate.exists() else None


class LNbitsServer:
    def __init__(self, python, folder, port):
        self.python, self.folder, self.port = Path(python), Path(folder), port
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.folder / "lnbits.log"
        self.process = None
        self.token = None

    def start(self):
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "LNBITS_DATA_FOLDER": str(self.folder / "data"),
               "LNBITS_EXTENSIONS_PATH": str(self.folder / "data"),
               "LNBITS_BACKEND_WALLET_CLASS": "FakeWallet", "LNBITS_ADMIN_UI": "true",
               # Payment notices go to the Workshop on loopback, which LNbits refuses by default.
               "LNBITS_CALLBACK_ALLOW_PRIVATE_IPS": "true",
               "LNBITS_CALLBACK_URL_RULES": '["http://127\\\\.0\\\\.0\\\\.1(:\\\\d+)?"]'}
        # Importing lnbits writes into its data folder: keep that in the server's folder too.
        package = subprocess.run([str(self.python), "-c", "import lnbits, os; print(os.path.dirname(lnbits.__file__))"],
                                 capture_output=True, text=True, check=True, cwd=self.folder, env=env).stdout.strip()
        link = self.folder / "lnbits"
        if not link.exists():
            link.symlink_to(package)
        self.process = subprocess.Popen(
            [str(self.python.parent / "lnbits"), "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.folder, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        for _ in range(1200):
            if self.process.poll() is not None:
                raise RuntimeError(f"LNbits exited:\n{self.log.read_text()[-3000:]}")
            try:
                requests.get(f"{self.url}/api/v1/health", timeout=1, allow_redirects=False)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"LNbits did not start:\n{self.log.read_text()[-3000:]}")
        self._first_install()
        return self

    def _first_install(self):
        body = {"username": "admin", "password": PASSWORD, "password_repeat": PASSWORD}
        response = requests.put(f"{self.url}/api/v1/auth/first_install", json=body, timeout=30)
        response.raise_for_status()
        self.token = response.json()["access_token"]

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def create_wallet(self, name, fund_sats=0):
        """Create an account with one wallet; return its id, invoice key and admin key."""
        response = requests.post(f"{self.url}/api/v1/account", json={"name": name}, timeout=30)
        response.raise_for_status()
        wallet = response.json()
        if fund_sats:
            response = requests.put(f"{self.url}/users/api/v1/balance", timeout=30,
                                    headers={"Authorization": f"Bearer {self.token}"},
                                    json={"id": wallet["id"], "amount": fund_sats})
            response.raise_for_status()
        return {"id": wallet["id"], "inkey": wallet["inkey"], "adminkey": wallet["adminkey"]}

    def balance_msat(self, wallet):
        response = requests.get(f"{self.url}/api/v1/wallet", headers={"X-Api-Key": wallet["inkey"]}, timeout=30)
        response.raise_for_status()
        return response.json()["balance"]

    def invoice(self, wallet, sats, memo="refund"):
        """Create an invoice in wallet; return its BOLT11."""
        response = requests.post(f"{self.url}/api/v1/payments", headers={"X-Api-Key": wallet["inkey"]},
                                 json={"out": False, "amount": sats, "memo": memo}, timeout=30)
        response.raise_for_status()
        return response.json()["bolt11"]

    def pay(self, wallet, payment_request):
        """Pay a BOLT11 from wallet; return LNbits' answer."""
        response = requests.post(f"{self.url}/api/v1/payments", headers={"X-Api-Key": wallet["adminkey"]},
                                 json={"out": True, "bolt11": payment_request}, timeout=30)
        response.raise_for_status()
        return response.json()
