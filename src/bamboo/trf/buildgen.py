#!/usr/bin/env python3
"""Bamboo's buildGen: the build step of panda-client's ``prun`` tasks (its ``buildSpec``).

Served at ``/trf/user/buildGen-00-00-01``; run like runGen in the build job's work directory as
``./buildGen-00-00-01 <jobPars>``. Self-contained (standard library only, Python 3.8+). With the
parameters prun writes into ``buildSpec.jobParameters``:

* ``-i <archive> --sourceURL <url>``: fetch the user's sandbox from the file cache
  (``<url>/cache/<archive>``); ``--noTarballDownload``: it is already here.
* ``-r <dir>``: where, inside the sandbox, ``--bexec "<url-quoted command>"`` runs (``make``,
  say); without ``--bexec`` (or with ``--noCompile``) nothing is compiled.
* ``-o <lib.tgz>``: the build, the whole unpacked sandbox with what the command made, packed
  as this file in the work directory; the run jobs unpack it (runGen ``-l``).

Exit codes: the build command's own when it fails; otherwise 0, or one of the codes below.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_BAD_ARGUMENTS = 64
EXIT_SANDBOX = 65

# Flags prun adds to set up ATLAS software; there is none here, so they have no effect.
ENVIRONMENT_FLAGS = ("--useAthenaPackages", "--useCMake", "--useRootCore")
ENVIRONMENT_OPTIONS = ("--rootVer", "--cmtConfig", "--overwriteQueuedata")

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
MAX_SANDBOX_BYTES = 2 * 1024**3
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_TIMEOUT_SECONDS = 120
CHUNK_BYTES = 1024 * 1024


class Refused(Exception):
    """The build cannot run: the message says why, the code is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"buildGen: {message}", flush=True)


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="buildGen", allow_abbrev=False, add_help=False)
    parse.add_argument("-i", dest="archive", required=True)
    parse.add_argument("-o", dest="lib", required=True)
    parse.add_argument("--sourceURL", dest="source_url", default="")
    parse.add_argument("-r", dest="run_dir", default=".")
    parse.add_argument("--bexec", dest="command", default="")
    parse.add_argument("--noCompile", dest="no_compile", action="store_true")
    parse.add_argument("--noTarballDownload", dest="no_download", action="store_true")
    for flag in ENVIRONMENT_FLAGS:
        parse.add_argument(flag, action="store_true")
    for option in ENVIRONMENT_OPTIONS:
        parse.add_argument(option)
    return parse


def file_name(name: str, what: str) -> str:
    """A plain file name: no directory part, so nothing is read or written outside the work area."""
    if not SAFE_NAME.fullmatch(name):
        raise Refused(f"{what} {name!r} is not a plain file name", EXIT_BAD_ARGUMENTS)
    return name


def relative_dir(path: str) -> str:
    """The run directory, which must stay inside the sandbox."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or ".." in parts:
        raise Refused(f"run directory {path!r} leaves the sandbox", EXIT_BAD_ARGUMENTS)
    return os.path.join(".", *parts)


def tls_context() -> ssl.SSLContext:
    """The system's trust store (which honours SSL_CERT_FILE and SSL_CERT_DIR), plus the grid's CA
    directory when the node has one."""
    context = ssl.create_default_context()
    grid_cas = os.environ.get("X509_CERT_DIR", "")
    if grid_cas and os.path.isdir(grid_cas):
        context.load_verify_locations(capath=grid_cas)
    return context


def download(url: str, target: str) -> None:
    """Fetch url into target, retrying network failures and server errors, never client errors."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            fetch(url, target)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == DOWNLOAD_ATTEMPTS:
                raise Refused(f"cannot fetch {url}: HTTP {exc.code}", EXIT_SANDBOX) from exc
            say(f"fetching {url} failed (HTTP {exc.code}); trying again")
        except (urllib.error.URLError, OSError) as exc:
            # An untrusted certificate stays untrusted: only the network may do better next time.
            if attempt == DOWNLOAD_ATTEMPTS or isinstance(getattr(exc, "reason", exc), ssl.SSLError):
                raise Refused(f"cannot fetch {url}: {exc}", EXIT_SANDBOX) from exc
            say(f"fetching {url} failed ({exc}); trying again")
        time.sleep(2**attempt)


def fetch(url: str, target: str) -> None:
    context = tls_context() if url.startswith("https:") else None
    received = 0
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS, context=context) as response:  # noqa: S310 (scheme checked by sandbox_url)
        with open(target, "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                if received > MAX_SANDBOX_BYTES:
                    raise Refused(f"{url} is larger than {MAX_SANDBOX_BYTES} bytes", EXIT_SANDBOX)
                out.write(chunk)


def sandbox_url(source_url: str, archive: str) -> str:
    scheme = urllib.parse.urlsplit(source_url).scheme
    if scheme not in ("http", "https"):
        raise Refused(f"--sourceURL {source_url!r} is not an http(s) URL", EXIT_BAD_ARGUMENTS)
    return f"{source_url.rstrip('/')}/cache/{urllib.parse.quote(archive)}"


def unpack(archive: str, destination: str) -> None:
    """Unpack a tarball, refusing members that would land outside the destination."""
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
            else:
                for member in tar.getmembers():
                    parts = member.name.split("/")
                    if member.name.startswith("/") or ".." in parts or member.islnk() or member.issym():
                        raise Refused(f"{archive}: member {member.name!r} is not allowed", EXIT_SANDBOX)
                tar.extractall(destination)  # noqa: S202 (members checked above)
    except (tarfile.TarError, OSError) as exc:
        raise Refused(f"cannot unpack {archive}: {exc}", EXIT_SANDBOX) from exc


def shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def pack(area: str, lib: str) -> None:
    """The whole build area as a gzipped tarball, members relative to the area's top."""
    with tarfile.open(lib, "w:gz") as tar:
        for entry in sorted(os.listdir(area)):
            tar.add(os.path.join(area, entry), arcname=entry)


def run(argv: list[str]) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        raise Refused(f"unsupported parameters: {' '.join(unknown)}", EXIT_BAD_ARGUMENTS)
    for option in (*ENVIRONMENT_FLAGS, *ENVIRONMENT_OPTIONS):
        if getattr(args, option.lstrip("-")):
            say(f"{option} has no effect here: no experiment software is set up")
    archive = file_name(args.archive, "-i")
    lib = file_name(args.lib, "-o")
    run_dir = relative_dir(args.run_dir)
    if not args.no_download:
        url = sandbox_url(args.source_url, archive)
        say(f"fetching the sandbox {url}")
        download(url, archive)
    # A fresh directory, so the build holds the sandbox only, not the job's other files.
    area = tempfile.mkdtemp(prefix="build.", dir=".")
    say(f"unpacking the sandbox {archive}")
    unpack(archive, area)
    work = os.path.join(area, run_dir)
    os.makedirs(work, exist_ok=True)
    command = urllib.parse.unquote(args.command)
    if command.strip() and not args.no_compile:
        say(f"building in {run_dir}: {command}")
        code = subprocess.call([shell(), "-c", command], cwd=work)  # noqa: S603 (the user's own build is the payload)
        say(f"the build command exited with {code}")
        if code != 0:
            return code if 0 < code < 256 else 1
    pack(area, lib)
    shutil.rmtree(area)
    say(f"wrote {lib}")
    return 0


def main() -> int:
    try:
        return run(sys.argv[1:])
    except Refused as exc:
        say(f"error: {exc}")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
