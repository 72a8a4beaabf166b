"""runGen and buildGen (bamboo/trf) run as a pilot runs them: copied into a job's work directory as
``./runGen-00-00-02`` and started through the shell with the job parameters the server renders for
prun's tasks, fetching the sandbox from a small local file-cache server (HTTP, and HTTPS with a CA
of our own)."""

from __future__ import annotations

import io
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from bamboo import trf
from bamboo.auth.local_ca import LocalCA, ensure_server_certificate

SANDBOX = "jobO.0123abcd-4567.tar.gz"
RUN_SECONDS = 60


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def file_cache(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``root`` (sandboxes under root/cache/) on a free port; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tarball(path: Path, files: dict[str, str | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    (tmp_path / "srv" / "cache").mkdir(parents=True)
    return tmp_path / "srv"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def run_trf(
    name: str, job_pars: str, work: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """What the pilot does: download the script as ./<name> and run ``./<name> <jobPars>``."""
    script = work / name
    script.write_bytes(trf.scripts()[name])
    script.chmod(0o755)
    return subprocess.run(
        f"./{name} {job_pars}",
        shell=True,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        env={**os.environ, **(env or {})},
        check=False,
    )


def exec_string(command: str) -> str:
    """``-p`` as prun sends it: the --exec string URL-quoted, in double quotes."""
    return f'-p "{quote(command)}"'


ANALYSIS = """#!/bin/sh
# counts the lines of each input and writes a histogram-like file per input
for f in $(echo "$1" | tr ',' ' '); do
  wc -l < "$f" | tr -d ' ' >> summary.txt; echo "$f" > "hist_$f.png"
done
"""


def test_run_job_with_inputs_fetches_the_sandbox_substitutes_inputs_and_names_outputs(
    cache_root: Path, work: Path
) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"ana/run.sh": ANALYSIS, "ana/data/notes.txt": "kept\n"})
    (work / "data.00.txt").write_text("a\nb\n")
    (work / "data.01.txt").write_text("c\n")
    outputs = {
        "summary.txt": "user.jane.10000001._000001.summary.txt",
        "hist_*.png": "user.jane.10000001._000001.hist_XYZ.png.tgz",
    }
    with file_cache(cache_root) as url:
        result = run_trf(
            trf.RUN_GEN,
            f'-j "" --sourceURL {url} -r ana/ -a {SANDBOX} -o "{outputs}" '
            "-i \"['data.00.txt', 'data.01.txt']\" "
            f"{exec_string('sh run.sh %IN && cat data/notes.txt >> summary.txt')} "
            "--writeInputToTxt IN:inputs.txt",
            work,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "user.jane.10000001._000001.summary.txt").read_text() == "2\n1\nkept\n"
    with tarfile.open(work / "user.jane.10000001._000001.hist_XYZ.png.tgz") as tar:
        assert sorted(tar.getnames()) == ["hist_data.00.txt.png", "hist_data.01.txt.png"]
    assert (work / "ana" / "inputs.txt").read_text() == "data.00.txt\ndata.01.txt\n"
    assert not (work / "ana" / "summary.txt").exists()
    # The downloaded tarball is not left for the log tarball.
    assert not (work / SANDBOX).exists()


def test_no_input_job_runs_the_command_the_server_rendered(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"gen.py": "import sys\nprint('seed', sys.argv[1])\n"})
    outputs = {"out.txt": "user.jane.10000002._000002.out.txt"}
    # %RNDM:10 arrives already replaced by the job's number (prun made it ${SEQNUMBER}); quotes,
    # $ and ; survive the shell because the command travels URL-quoted.
    command = """python3 gen.py 11 > out.txt; echo "it's $((1 + 1))" >> out.txt"""
    with file_cache(cache_root) as url:
        result = run_trf(
            trf.RUN_GEN,
            f'-j "" --sourceURL {url} -r . -a {SANDBOX} -o "{outputs}" {exec_string(command)}',
            work,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "user.jane.10000002._000002.out.txt").read_text() == "seed 11\nit's 2\n"


def test_secondary_streams_and_real_output_names(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"readme": "x"})
    for name in ("sig.1", "sig.2", "bkg.1", "ovl.1"):
        (work / name).write_text(name)
    outputs = {"result.txt": "user.jane.10000003._000001.result.txt"}
    in_map = "{'IN': ['sig.1', 'sig.2'], 'IN2': ['bkg.1'], 'OVL': ['ovl.1']}"
    with file_cache(cache_root) as url:
        result = run_trf(
            trf.RUN_GEN,
            f'-j "" --sourceURL {url} -r . -a {SANDBOX} -o "{outputs}" '
            "-i \"['sig.1', 'sig.2']\" "
            f'--inMap "{in_map}" '
            f"{exec_string('echo %IN / %IN2 / %OVL > result.txt')} --execWithRealFileNames",
            work,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "user.jane.10000003._000001.result.txt").read_text() == "sig.1,sig.2 / bkg.1 / ovl.1\n"
    assert "echo sig.1,sig.2 / bkg.1 / ovl.1 > user.jane.10000003._000001.result.txt" in result.stdout


def test_failing_command_gives_its_exit_code(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"readme": "x"})
    with file_cache(cache_root) as url:
        result = run_trf(
            trf.RUN_GEN,
            f'-j "" --sourceURL {url} -r . -a {SANDBOX} -o "{{}}" {exec_string("echo oops >&2; exit 3")}',
            work,
        )
    assert result.returncode == 3
    assert "oops" in result.stderr


def test_missing_output_fails_unless_allowed(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"readme": "x"})
    outputs = {"a.txt": "user.jane.7._000001.a.txt", "b.txt": "user.jane.7._000001.b.txt"}
    base = f'-j "" -r . -a {SANDBOX} -o "{outputs}" {exec_string("touch a.txt")}'
    with file_cache(cache_root) as url:
        missing = run_trf(trf.RUN_GEN, f"{base} --sourceURL {url}", work)
        allowed = run_trf(
            trf.RUN_GEN, f"{base} --sourceURL {url} --allowNoOutput=user.jane.7._000001.b.txt", work
        )
    assert missing.returncode == 66
    assert "outputs not produced: b.txt" in missing.stdout
    assert allowed.returncode == 0, allowed.stdout
    assert (work / "user.jane.7._000001.a.txt").exists()


def test_missing_sandbox_and_bad_parameters_are_refused(cache_root: Path, work: Path) -> None:
    with file_cache(cache_root) as url:
        absent = run_trf(
            trf.RUN_GEN, f'-j "" --sourceURL {url} -r . -a {SANDBOX} {exec_string("true")}', work
        )
        sneaky = run_trf(trf.RUN_GEN, f"--sourceURL {url} -a ../secret.tar.gz {exec_string('true')}", work)
        escaping = run_trf(trf.RUN_GEN, f"--sourceURL {url} -r ../.. {exec_string('true')}", work)
        container = run_trf(trf.RUN_GEN, f"--containerImage docker://x {exec_string('true')}", work)
    assert (absent.returncode, sneaky.returncode, escaping.returncode) == (65, 64, 64)
    assert f"cannot fetch {url}/cache/{SANDBOX}: HTTP 404" in absent.stdout
    assert "'../secret.tar.gz' is not a plain file name" in sneaky.stdout
    assert "leaves the sandbox" in escaping.stdout
    assert (container.returncode, "unsupported parameters: --containerImage docker://x") == (
        64,
        container.stdout.strip().splitlines()[-1].removeprefix("runGen: error: "),
    )


def test_sandbox_member_outside_the_work_area_is_refused(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / SANDBOX, {"../escaped.txt": "x"})
    with file_cache(cache_root) as url:
        result = run_trf(trf.RUN_GEN, f"--sourceURL {url} -a {SANDBOX} {exec_string('true')}", work)
    assert result.returncode == 65
    assert not (work.parent / "escaped.txt").exists()


def test_build_then_run_from_the_lib(cache_root: Path, work: Path, tmp_path: Path) -> None:
    sources = {
        "src/Makefile": "hello: hello.sh\n\tcp hello.sh hello && chmod +x hello\n",
        "src/hello.sh": '#!/bin/sh\necho built hello "$@"\n',
    }
    tarball(cache_root / "cache" / "sources.abc.tar.gz", sources)
    lib = "panda.1208010203.000001.lib._10000004.42.lib.tgz"
    with file_cache(cache_root) as url:
        build = run_trf(
            trf.BUILD_GEN,
            f'-i sources.abc.tar.gz -o {lib} --sourceURL {url} -r src/ --bexec "{quote("make hello")}"',
            work,
        )
    assert build.returncode == 0, build.stdout + build.stderr
    with tarfile.open(work / lib) as tar:
        assert sorted(tar.getnames()) == ["src", "src/Makefile", "src/hello", "src/hello.sh"]
    assert sorted(p.name for p in work.iterdir()) == sorted([trf.BUILD_GEN, lib, "sources.abc.tar.gz"])

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / lib).write_bytes((work / lib).read_bytes())
    (run_dir / "in.1").write_text("x")
    outputs = {"out.txt": "user.jane.10000004._000001.out.txt"}
    result = run_trf(
        trf.RUN_GEN,
        f'-j "" --sourceURL {url} -r src/ -l {lib} -o "{outputs}" -i "[\'in.1\']" '
        f"{exec_string('./hello %IN > out.txt')}",
        run_dir,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run_dir / "user.jane.10000004._000001.out.txt").read_text() == "built hello in.1\n"


def test_failed_build_gives_its_exit_code(cache_root: Path, work: Path) -> None:
    tarball(cache_root / "cache" / "sources.abc.tar.gz", {"Makefile": "all:\n\tfalse\n"})
    with file_cache(cache_root) as url:
        build = run_trf(
            trf.BUILD_GEN, f"-i sources.abc.tar.gz -o lib.tgz --sourceURL {url} -r . --bexec make", work
        )
    assert build.returncode == 2
    assert not (work / "lib.tgz").exists()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    home = tmp_path_factory.mktemp("ca")
    ca = LocalCA.load_or_create(home)
    cert, key = ensure_server_certificate(ca, home)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, home / "ca.pem"


def trust_by_file(ca_file: Path, _: Path) -> dict[str, str]:
    return {"SSL_CERT_FILE": str(ca_file)}


def trust_by_grid_directory(ca_file: Path, tmp_path: Path) -> dict[str, str]:
    """An IGTF-style CA directory (hash links made by ``openssl rehash``), as pilots have."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make the CA directory's hash links")
    directory = tmp_path / "certificates"
    directory.mkdir()
    shutil.copy(ca_file, directory / "bamboo-ca.pem")
    subprocess.run([openssl, "rehash", str(directory)], check=True, capture_output=True)
    return {"SSL_CERT_FILE": os.devnull, "X509_CERT_DIR": str(directory)}


@pytest.mark.parametrize("trust", [trust_by_file, trust_by_grid_directory])
def test_sandbox_over_https_is_verified_against_the_trusted_cas(
    cache_root: Path, work: Path, tmp_path: Path, tls_server: tuple[ssl.SSLContext, Path], trust
) -> None:
    context, ca_file = tls_server
    tarball(cache_root / "cache" / SANDBOX, {"x.sh": "echo secure > out.txt\n"})
    outputs = {"out.txt": "user.jane.5._000001.out.txt"}
    pars = f'-j "" -r . -a {SANDBOX} -o "{outputs}" {exec_string("sh x.sh")}'
    with file_cache(cache_root, tls=context) as url:
        untrusted = run_trf(trf.RUN_GEN, f"--sourceURL {url} {pars}", work, env={"SSL_CERT_FILE": os.devnull})
        trusted = run_trf(trf.RUN_GEN, f"--sourceURL {url} {pars}", work, env=trust(ca_file, tmp_path))
    assert untrusted.returncode == 65
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert (work / "user.jane.5._000001.out.txt").read_text() == "secure\n"
