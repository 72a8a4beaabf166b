"""Bamboo's own generic transformations for user analysis jobs, served at ``/trf/user/<name>``.

panda-client's ``prun`` names no transformation; the refiner then points its jobs at these
(``logic/transformations.py``). Each is one self-contained Python script in this package, which a
pilot or ``bamboo worker`` downloads into the job's work directory and runs there as
``./<name> <job parameters>``:

* ``runGen-00-00-02`` (``rungen.py``): unpack the user's sandbox, run the ``--exec`` command with
  the input files substituted, name the outputs as the job's output files;
* ``buildGen-00-00-01`` (``buildgen.py``): the build job of a task with a ``buildSpec``, which
  turns the sandbox into the ``lib.tgz`` the run jobs unpack.
"""

from __future__ import annotations

from importlib import resources

RUN_GEN = "runGen-00-00-02"
BUILD_GEN = "buildGen-00-00-01"
#: URL path under which the scripts are served.
URL_PATH = "/trf/user"
_SOURCES = {RUN_GEN: "rungen.py", BUILD_GEN: "buildgen.py"}


def scripts() -> dict[str, bytes]:
    """Every transformation by the name it is served under."""
    package = resources.files(__package__)
    return {name: package.joinpath(source).read_bytes() for name, source in _SOURCES.items()}


def url(base: str, name: str) -> str:
    """Where a server reachable at ``base`` (scheme://host[:port]) serves ``name``."""
    return f"{base.rstrip('/')}{URL_PATH}/{name}"
