#!/usr/bin/env python3
"""Bamboo's runGen: the generic transformation of panda-client's ``prun`` jobs.

Served at ``/trf/user/runGen-00-00-02``; a pilot (or ``bamboo worker``) downloads it into the job's
work directory, where the job's input files already are, and runs ``./runGen-00-00-02 <jobPars>``
through the shell. It is self-contained (standard library only, Python 3.8+), so any worker node
can run it. What it does with the parameters prun builds:

* ``-a <archive> --sourceURL <url>``: fetch the user's sandbox from the file cache
  (``<url>/cache/<archive>``) and unpack it here; ``--noTarballDownload``: the archive is already
  here. ``-l <lib.tgz>``: unpack the build job's output (an input file of the job) instead.
* ``-r <dir>``: the directory, inside the sandbox, the command runs in.
* ``-i "['f1', 'f2']"`` and ``--inMap "{'IN': [...], 'BKG': [...]}"``: the input files of each
  stream; ``%IN`` (and ``%BKG`` ...) in the command become their comma-joined names.
  ``--writeInputToTxt IN:in.txt`` also writes a stream's names, one per line, to a file.
* ``-p "<url-quoted command>"``: the ``--exec`` string. The server has already replaced ``%RNDM``,
  ``%SKIPEVENTS`` and friends (prun turned them into ``${...}`` placeholders).
* ``-o "{'out.root': 'user.x.123._000001.out.root', 'h*.png': '....hXYZ.png.tgz'}"``: after the
  command, each file it wrote is renamed to its output file name in the work directory; a pattern
  with ``*`` collects its matches into the named tarball. ``--execWithRealFileNames`` puts the
  output file names into the command instead. ``--allowNoOutput=<names>``: outputs that may be
  missing.

Exit codes: the command's own when it fails; otherwise 0, or one of the codes below.
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_BAD_ARGUMENTS = 64
EXIT_SANDBOX = 65
EXIT_MISSING_OUTPUT = 66

# Flags prun adds to set up ATLAS software (Athena, RootCore, a ROOT version, a platform); there is
# no such software here, so they are accepted and have no effect: the command runs as it is.
ENVIRONMENT_FLAGS = ("--useAthenaPackages", "--useCMake", "--useRootCore")
ENVIRONMENT_OPTIONS = ("--rootVer", "--cmtConfig", "--overwriteQueuedata")

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
STREAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MAX_SANDBOX_BYTES = 2 * 1024**3
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_TIMEOUT_SECONDS = 120
CHUNK_BYTES = 1024 * 1024


class Refused(Exception):
    """The job cannot run: the message says why, the code is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"runGen: {message}", flush=True)


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="runGen", allow_abbrev=False, add_help=False)
    parse.add_argument("-j", dest="job_script", default="")
    parse.add_argument("--sourceURL", dest="source_url", default="")
    parse.add_argument("-r", dest="run_dir", default=".")
    parse.add_argument("-a", dest="archive", default="")
    parse.add_argument("-l", dest="lib", default="")
    parse.add_argument("--noTarballDownload", dest="no_download", action="store_true")
    parse.add_argument("-o", dest="outputs", default="{}")
    parse.add_argument("-i", dest="inputs", default="[]")
    parse.add_argument("--inMap", dest="in_map", default="{}")
    parse.add_argument("-p", dest="command", default="")
    parse.add_argument("--writeInputToTxt", dest="input_lists", default="")
    parse.add_argument("--execWithRealFileNames", dest="real_names", action="store_true")
    parse.add_argument("--allowNoOutput", dest="allow_no_output", default="")
    for flag in ENVIRONMENT_FLAGS:
        parse.add_argument(flag, action="store_true")
    for option in ENVIRONMENT_OPTIONS:
        parse.add_argument(option)
    return parse


def literal(text: str, kind: type, what: str) -> object:
    """A Python literal prun wrote (a list or a dict of strings), refused unless of that kind."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise Refused(f"{what} is not a Python {kind.__name__}: {text!r}", EXIT_BAD_ARGUMENTS) from exc
    if not isinstance(value, kind):
        raise Refused(f"{what} is not a Python {kind.__name__}: {text!r}", EXIT_BAD_ARGUMENTS)
    return value


def string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Refused(f"{what} must be a list of file names", EXIT_BAD_ARGUMENTS)
    return value


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


def input_streams(args: argparse.Namespace) -> dict[str, list[str]]:
    """Stream name -> its files: ``IN`` from ``-i``, every stream of ``--inMap`` (which wins)."""
    streams = {"IN": string_list(literal(args.inputs, list, "-i"), "-i")}
    in_map = literal(args.in_map, dict, "--inMap")
    for name, files in in_map.items():
        if not isinstance(name, str) or not STREAM_NAME.fullmatch(name):
            raise Refused(f"--inMap stream name {name!r} is not a name", EXIT_BAD_ARGUMENTS)
        streams[name] = string_list(files, f"--inMap stream {name}")
    for files in streams.values():
        for name in files:
            file_name(name, "input file")
    return streams


def output_map(text: str) -> dict[str, str]:
    outputs = literal(text, dict, "-o")
    for pattern, lfn in outputs.items():
        if not isinstance(pattern, str) or not isinstance(lfn, str):
            raise Refused(f"-o maps file names to file names, not {pattern!r}: {lfn!r}", EXIT_BAD_ARGUMENTS)
        if pattern.startswith("regex|"):
            raise Refused(f"regular-expression outputs ({pattern}) are not supported", EXIT_BAD_ARGUMENTS)
        file_name(lfn, "output file name")
        if "/" in pattern or pattern in ("", ".", ".."):
            raise Refused(f"output {pattern!r} is not a file name", EXIT_BAD_ARGUMENTS)
    return outputs


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


def prepare_sandbox(args: argparse.Namespace) -> None:
    if args.lib:
        lib = file_name(args.lib, "-l")
        say(f"unpacking the build {lib}")
        unpack(lib, ".")
        return
    if not args.archive:
        return
    archive = file_name(args.archive, "-a")
    if not args.no_download:
        url = sandbox_url(args.source_url, archive)
        say(f"fetching the sandbox {url}")
        download(url, archive)
    say(f"unpacking the sandbox {archive}")
    unpack(archive, ".")
    if not args.no_download:
        os.remove(archive)


def substitute_inputs(command: str, streams: dict[str, list[str]]) -> str:
    """``%NAME`` of each input stream -> its comma-joined files; a longer name never loses its tail
    (``%IN2`` is not ``%IN`` followed by 2)."""
    for name in sorted(streams, key=len, reverse=True):
        if streams[name]:
            pattern = re.compile(rf"%{name}(?![A-Za-z0-9_])")
            command = pattern.sub(lambda _match, files=streams[name]: ",".join(files), command)
    return command


def link_inputs(streams: dict[str, list[str]], run_dir: str) -> None:
    """Make the staged inputs visible by their names from a run directory below the work area."""
    if os.path.abspath(run_dir) == os.path.abspath("."):
        return
    for files in streams.values():
        for name in files:
            target = os.path.join(run_dir, name)
            if os.path.exists(name) and not os.path.lexists(target):
                os.symlink(os.path.abspath(name), target)


def write_input_lists(spec: str, streams: dict[str, list[str]], run_dir: str) -> None:
    for item in filter(None, spec.split(",")):
        stream, _, list_name = item.partition(":")
        stream = stream.lstrip("%")
        if stream not in streams or not list_name:
            raise Refused(f"--writeInputToTxt item {item!r} is not <stream>:<file>", EXIT_BAD_ARGUMENTS)
        path = os.path.join(run_dir, file_name(list_name, "--writeInputToTxt file"))
        with open(path, "w") as out:
            out.writelines(f"{name}\n" for name in streams[stream])


def shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def collect_outputs(outputs: dict[str, str], run_dir: str, allowed_missing: set[str]) -> list[str]:
    """Move each output to its file name in the work area; the names of missing outputs.

    A plain output is looked for under its file name first (the command wrote it so, with
    ``--execWithRealFileNames``), then under the name the user gave; a pattern with ``*``
    collects its matches into the named tarball.
    """
    missing = []
    for pattern, lfn in outputs.items():
        if "*" in pattern:
            matches = sorted(glob.glob(os.path.join(run_dir, pattern)))
            if matches:
                with tarfile.open(lfn, "w:gz") as tar:
                    for path in matches:
                        tar.add(path, arcname=os.path.relpath(path, run_dir))
                say(f"{pattern}: {len(matches)} files -> {lfn}")
                continue
        else:
            produced = next(
                (
                    path
                    for path in (os.path.join(run_dir, lfn), os.path.join(run_dir, pattern))
                    if os.path.isfile(path)
                ),
                None,
            )
            if produced is not None:
                if os.path.abspath(produced) != os.path.abspath(lfn):
                    shutil.move(produced, lfn)
                say(f"{os.path.basename(produced)} -> {lfn}")
                continue
        if lfn in allowed_missing:
            say(f"{pattern} was not produced, which is allowed")
        else:
            missing.append(pattern)
    return missing


def run(argv: list[str]) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        raise Refused(f"unsupported parameters: {' '.join(unknown)}", EXIT_BAD_ARGUMENTS)
    if args.job_script:
        raise Refused(f"-j {args.job_script!r}: job scripts are not supported", EXIT_BAD_ARGUMENTS)
    for option in (*ENVIRONMENT_FLAGS, *ENVIRONMENT_OPTIONS):
        if getattr(args, option.lstrip("-")):
            say(f"{option} has no effect here: no experiment software is set up")
    streams = input_streams(args)
    outputs = output_map(args.outputs)
    run_dir = relative_dir(args.run_dir)
    prepare_sandbox(args)
    os.makedirs(run_dir, exist_ok=True)
    link_inputs(streams, run_dir)
    write_input_lists(args.input_lists, streams, run_dir)
    command = substitute_inputs(urllib.parse.unquote(args.command), streams)
    if args.real_names:
        for pattern, lfn in outputs.items():
            if "*" not in pattern:
                command = command.replace(pattern, lfn)
    if not command.strip():
        raise Refused("no command to run (-p is empty)", EXIT_BAD_ARGUMENTS)
    say(f"running in {run_dir}: {command}")
    code = subprocess.call([shell(), "-c", command], cwd=run_dir)  # noqa: S603 (the user's own command is the payload)
    say(f"the command exited with {code}")
    if code != 0:
        return code if 0 < code < 256 else 1
    allowed_missing = {name for name in args.allow_no_output.split(",") if name}
    missing = collect_outputs(outputs, run_dir, allowed_missing)
    if missing:
        raise Refused(f"outputs not produced: {', '.join(missing)}", EXIT_MISSING_OUTPUT)
    return 0


def main() -> int:
    try:
        return run(sys.argv[1:])
    except Refused as exc:
        say(f"error: {exc}")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
