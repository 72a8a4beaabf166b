"""`bamboo token issue` and `bamboo cert issue`: credentials the local server trusts."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from bamboo.cli.options import HomeOption, console, fail, settings_for

token_app = typer.Typer(help="Bearer tokens from the embedded OIDC issuer.", no_args_is_help=True)
cert_app = typer.Typer(help="X.509 certificates from the local CA.", no_args_is_help=True)


@token_app.command("issue")
def issue_token(
    user: Annotated[str, typer.Option(help="User name (the token's name claim), e.g. 'Jane Doe'.")],
    vo: Annotated[str | None, typer.Option(help="VO (default: the first of BAMBOO_LOCAL_TOKEN_VOS).")] = None,
    role: Annotated[str | None, typer.Option(help="production or pilot: adds the <vo>/<role> group.")] = None,
    lifetime: Annotated[int, typer.Option(help="Validity in seconds.")] = 86400,
    out: Annotated[
        Path | None, typer.Option(help="Write the token to this file (mode 0600, no trailing newline).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Print a token this server accepts (send it with `Origin: <vo>` or `<vo>.<role>`)."""
    from bamboo.home import prepare_home

    settings = settings_for(home, None)
    vo = vo or settings.local_token_vos[0]
    if vo not in settings.local_token_vos:
        raise fail(f"VO {vo!r} is not served by the embedded issuer; add it to BAMBOO_LOCAL_TOKEN_VOS")
    issuer = prepare_home(settings).issuer
    try:
        token = issuer.issue_token(user=user, vo=vo, role=role, lifetime=timedelta(seconds=lifetime))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if out is None:
        typer.echo(token)
        return
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    console.print(f"token for {user!r} ({vo}{'/' + role if role else ''}) written to {out}")


@cert_app.command("issue")
def issue_certificate(
    dn: Annotated[str, typer.Option(help="Subject in slash form, e.g. '/DC=org/DC=example/CN=Jane Doe'.")],
    out: Annotated[Path, typer.Option(help="Writes OUT.pem (certificate chain) and OUT.key (private key).")],
    proxy: Annotated[
        bool, typer.Option("--proxy", help="Also make an RFC 3820 proxy and use it as leaf.")
    ] = False,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="With --proxy: a legacy (GT2) proxy instead.")
    ] = False,
    limited: Annotated[bool, typer.Option("--limited", help="With --proxy: a limited proxy.")] = False,
    fqan: Annotated[
        list[str] | None,
        typer.Option("--fqan", help="VOMS FQAN to embed, e.g. /atlas/Role=production (repeatable)."),
    ] = None,
    lifetime: Annotated[int, typer.Option(help="Validity of the certificate in seconds.")] = 7 * 86400,
    home: HomeOption = None,
) -> None:
    """Issue a client certificate signed by the local CA."""
    from bamboo.auth.local_ca import issue_user_credentials
    from bamboo.home import prepare_home

    if (legacy or limited) and not proxy:
        raise fail("--legacy and --limited need --proxy")
    ca = prepare_home(settings_for(home, None)).ca
    try:
        pem, key = issue_user_credentials(
            ca,
            dn=dn,
            out_prefix=out,
            proxy=proxy,
            legacy_proxy=legacy,
            limited=limited,
            fqans=fqan or (),
            lifetime=timedelta(seconds=lifetime),
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    console.print(f"certificate written to {pem}, key to {key}")
