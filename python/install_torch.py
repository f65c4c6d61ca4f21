"""Install torch for the tests, light on disk: `make pypackage` runs this.

PyPI's Linux torch is the CUDA build: about 3 GB of wheels that unpack to
about 5 GB. pip would keep a second copy of the wheels in its cache, and
torch's requirements include triton (1 GB, the GPU compiler of
`torch.compile`, which these tests never call; torch imports and runs on
CPU without it). So this installs torch with `--no-deps`, then each of its
other requirements (from the installed torch's own metadata) one at a time,
none through pip's cache, so that only one package's wheels sit on the
disk beside what is already installed. pip unpacks them in a folder inside
the virtual environment, on its disk, not in /tmp (which may be a small
tmpfs). Requirements already met are left as they are; running it again
installs nothing.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).with_name("requirements-torch.txt")
LEFT_OUT = {"triton"}


def pip_install(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir"]
    with tempfile.TemporaryDirectory(prefix="pip-", dir=sys.prefix) as tmp:
        subprocess.run([*cmd, *args], check=True, env={**os.environ, "TMPDIR": tmp})


def met(req: Requirement) -> bool:
    """Whether an installed distribution satisfies `req`."""
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


def main() -> int:
    lines = [ln.strip() for ln in REQUIREMENTS.read_text().splitlines()]
    torch = Requirement(next(ln for ln in lines if ln and not ln.startswith("#")))
    if not met(torch):
        free = shutil.disk_usage(sys.prefix).free / 2**30
        print(f"install_torch: installing {torch} ({free:.1f} GiB free on the disk of {sys.prefix})", flush=True)
        pip_install("--no-deps", str(torch))
    missing = []
    for text in md.requires("torch") or []:
        req = Requirement(text)
        if canonicalize_name(req.name) in LEFT_OUT:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if not met(req):
            req.marker = None
            missing.append(str(req))
    if missing:
        print(
            f"install_torch: {len(missing)} of torch's requirements, one at a time, without "
            f"{', '.join(sorted(LEFT_OUT))} (pip will say that torch requires it: left out on purpose)",
            flush=True,
        )
    for req in missing:
        pip_install(req)
    # fail here, loudly, if what was installed does not import
    subprocess.run([sys.executable, "-c", "import torch; torch.ones(2) @ torch.ones(2)"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
