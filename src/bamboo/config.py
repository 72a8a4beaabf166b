"""Server settings: one documented field per knob, read from ``BAMBOO_*`` environment variables.

The command line (`bamboo serve --home ... --database-url ...`) only overrides these fields, so a
setting has one name everywhere: the field below, the environment variable ``BAMBOO_<FIELD>``
and the generated settings page in the docs.
"""

from __future__ import annotations

import re
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".bamboo")


class Settings(BaseSettings):
    """Every setting of a Bamboo server or admin command."""

    model_config = SettingsConfigDict(env_prefix="BAMBOO_", extra="ignore", frozen=True)

    home: Path = Field(
        DEFAULT_HOME,
        description="Data directory: SQLite database, local CA, server certificate, token signing key.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db. Default: the SQLite "
        "file bamboo.db inside the home.",
    )
    host: str = Field("127.0.0.1", description="Address both listeners bind to.")
    http_port: int = Field(25080, ge=0, le=65535, description="Plain-HTTP port (public endpoints, tokens).")
    https_port: int = Field(
        25443, ge=0, le=65535, description="HTTPS port with optional client certificates."
    )
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the ports (SO_REUSEPORT).")
    agents: bool = Field(True, description="Run the background agents inside the server process.")
    agent_period_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often an idle agent looks for work that arrived without waking it (from other "
        "processes).",
    )
    server_hostnames: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="DNS names put into the generated server certificate.",
    )
    ca_dirs: list[Path] = Field(
        default_factory=list,
        description="Extra trusted CA certificates for client certificates: IGTF-style directories or "
        "PEM files. The local CA in the home is always trusted.",
    )
    voms_dirs: list[Path] = Field(
        default_factory=list,
        description="Certificates of trusted VOMS servers (directories or PEM files); the local CA always "
        "counts as one. VOMS attributes signed by anyone else are ignored.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of TLS-terminating proxies whose client-certificate headers "
        "are believed. Empty: the headers are ignored.",
    )
    proxy_cert_header: str = Field(
        "X-SSL-Client-Cert",
        description="Header carrying the client certificate as URL-encoded PEM (nginx "
        "$ssl_client_escaped_cert), read only from trusted proxies.",
    )
    proxy_fqans_header: str = Field(
        "X-SSL-Client-FQANs",
        description="Header with comma-separated VOMS FQANs, read only from trusted proxies, used when "
        "the forwarded certificate carries none.",
    )
    production_dns: list[str] = Field(
        default_factory=list,
        description="DN fragments that grant the production role to any certificate DN containing them.",
    )
    token_issuer_url: str | None = Field(
        None,
        description="Issuer (iss) of tokens minted by `bamboo token issue`. Default: "
        "https://<first server hostname>:<https port>/ as recorded in the home when it was created.",
    )
    local_token_vos: list[str] = Field(
        default_factory=lambda: ["bamboo"],
        description="VOs for which tokens of the embedded issuer (`bamboo token issue`) are accepted; the "
        "first is the default VO of `bamboo token issue`.",
        min_length=1,
    )
    auth_config_dir: Path | None = Field(
        None,
        description="Directory of PanDA-style <vo>[.<role>]_auth_config.json files for external OIDC "
        "issuers; served under /auth/ together with the local issuer's.",
    )
    token_over_http: bool = Field(
        False,
        description="Accept a bearer token as a secure identity on the plain-HTTP port. Off by default: "
        "tokens travel only over TLS.",
    )
    ban_refresh_seconds: float = Field(
        30.0, ge=0, description="How long the ban list is cached before it is read again."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest accepted request body (after gzip decoding)."
    )
    request_head_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest a client may take to send a request's line and headers, counted from "
        "connecting (or from the previous response on a kept-alive connection); slower or silent "
        "connections are closed, so slow clients cannot hold all sockets (slowloris).",
    )
    db_pool_size: int = Field(
        20,
        ge=1,
        le=500,
        description="Database connections per server process (PostgreSQL); requests beyond wait for one.",
    )
    job_watchdog_period_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How often the job watchdog looks for jobs past their timeouts when nothing wakes "
        "it; its timeouts count in minutes to days (domain.md 10.3).",
    )
    job_heartbeat_timeout_minutes: float = Field(
        120.0,
        gt=0,
        description="A starting or running job whose pilot sent nothing for this long has lost its "
        "heartbeat: it fails with jobDispatcherErrorCode 100 (jobs at paused queues wait).",
    )
    job_sent_timeout_minutes: float = Field(
        30.0,
        gt=0,
        description="A sent job no pilot has answered for within this time fails with "
        "jobDispatcherErrorCode 102 (an acquire_jobs answer that never reached its pilot).",
    )
    job_holding_timeout_analysis_minutes: float = Field(
        180.0,
        gt=0,
        description="An analysis job, or a production job with priority above 800, left in holding "
        "without a final report for this long fails with jobDispatcherErrorCode 103.",
    )
    job_holding_timeout_minutes: float = Field(
        2880.0,
        gt=0,
        description="Any job left in holding without a final report for this long fails with "
        "jobDispatcherErrorCode 103.",
    )
    job_transferring_timeout_analysis_minutes: float = Field(
        120.0,
        gt=0,
        description="An analysis job in transferring without an update for this long fails with "
        "jobDispatcherErrorCode 104.",
    )
    job_transferring_timeout_minutes: float = Field(
        2880.0,
        gt=0,
        description="Any other job in transferring without an update for this long fails with "
        "jobDispatcherErrorCode 104.",
    )
    job_running_max_days: float = Field(
        21.0,
        gt=0,
        description="A job still running this long after its creation is killed with code 2 (expire).",
    )
    job_defined_timeout_days: float = Field(
        7.0,
        gt=0,
        description="A defined or assigned job unchanged for this long is killed with code 2 (expire).",
    )
    job_defined_timeout_production_hours: float = Field(
        4.0,
        gt=0,
        description="A production (managed) job defined or assigned for this long is killed with code "
        "51 (reassigned by JEDI), so its task makes a new one.",
    )
    job_activated_timeout_days: float = Field(
        7.0,
        gt=0,
        description="An activated job no pilot took for this long is killed with code 2 (expire).",
    )
    job_activated_timeout_production_hours: float = Field(
        48.0,
        gt=0,
        description="A production (managed) job activated for this long is killed with code 51 "
        "(reassigned by JEDI).",
    )
    job_starting_timeout_production_hours: float = Field(
        48.0,
        gt=0,
        description="A production (managed) job in starting since this long (stateChangeTime) is killed "
        "with code 51 (reassigned by JEDI).",
    )
    job_pending_timeout_minutes: float = Field(
        60.0,
        gt=0,
        description="A pending job unchanged for this long is killed with code 4 (expire in waiting).",
    )
    job_waiting_timeout_minutes: float = Field(
        60.0,
        gt=0,
        description="A waiting job unchanged for this long is killed with code 4 (expire in waiting).",
    )
    job_throttled_timeout_days: float = Field(
        7.0,
        gt=0,
        description="A throttled job unchanged for this long is killed with code 2 (expire).",
    )
    job_archive_delay_hours: float = Field(
        6.0,
        ge=1.0,
        le=24 * 365,
        description="A job in a final status (finished, failed, cancelled, closed) moves from the "
        "active tables to the archive this long after its last change, so dispatch and heartbeats "
        "read a table as small as the work in flight. Upstream keeps final jobs a few days in its "
        "active archive (domain.md 10.4) because its tools read them there; in Bamboo every read "
        "that may need a final job also reads the archive (logic/archive.py lists them), and what "
        "reads only the active table needs live jobs or jobs final for less than an hour "
        "(job/get_status), hence the floor of one hour; six hours leave a margin for a pilot's late "
        "final report and for operators looking at the day's failures.",
    )
    job_archive_batch_size: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Jobs the archiver moves (or deletes past retention) per transaction, with their "
        "files: large enough to keep up with thousands of jobs a second (an archiver that did work "
        "runs again at once), small enough that a batch holds its locks for a fraction of a second.",
    )
    job_archive_retention_days: float = Field(
        90.0,
        ge=0,
        description="Archived jobs and their files are deleted this long after their last change; "
        "90 days as the window of upstream's long-term archive reads (api-v1.md 2.1, 2.2). 0 keeps "
        "them forever.",
    )
    job_archive_period_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How often the archiver looks for jobs to archive or delete when it found none "
        "the last time; its delays count in hours and days.",
    )
    statistics_refresh_period_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How often the statistics agent brings its counts of recent final jobs up to "
        'date (docs/architecture.md, "Job statistics"). The endpoints stay exact between refreshes '
        "(they count the final jobs since the last one); a longer period only makes that part "
        "longer. A refresh takes SQLite's one write lock: every 5 s it cost dispatch and event "
        "ranges a sixth of their rate in the benchmark.",
    )
    statistics_settle_seconds: float = Field(
        60.0,
        ge=0,
        le=600,
        description="The statistics agent counts a final job into its totals once its modification "
        "time is this old; the endpoints count newer ones themselves. It covers the jobs a "
        "transaction stamps before it commits and the clock difference between Bamboo hosts: a job "
        "committed later than this after its stamp would be missed until the next rebuild.",
    )
    statistics_rebuild_minutes: float = Field(
        60.0,
        gt=0,
        le=10080,
        description="The statistics agent recounts its totals from the job tables this often, "
        "instead of adding the jobs that entered and left each window since its last refresh; "
        "anything the updates missed (rows written directly into the tables with old times) is "
        "then counted.",
    )
    pilot_streaming_period_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How often the pilot-streaming agent sizes the workers of each queue whose catalog "
        "entry has pilot_streaming: true and tells its Harvester (SET_N_WORKERS_JOBTYPE commands).",
    )
    carousel_period_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How often the data-carousel agent submits queued staging requests and polls the "
        "progress of staging ones (it also runs at once when the refiner queues a request).",
    )
    carousel_destinations: list[str] = Field(
        ["LOCAL_DATADISK"],
        min_length=1,
        max_length=100,
        description="Disk RSEs staging requests may copy tape data to, in order of preference; "
        "data_carousel/change_staging_destination moves a request to the next one not yet tried.",
    )
    carousel_max_staging_per_tape: int = Field(
        20,
        ge=1,
        le=100000,
        description="At most this many requests stage from one tape at once; further ones stay queued.",
    )
    tape_staging_delay_seconds: float = Field(
        60.0,
        ge=0,
        le=7 * 86400,
        description="Tape simulator: seconds between a rule's submission and its first transfer "
        "(mount and seek time).",
    )
    tape_bandwidth_bytes_per_second: float = Field(
        100e6,
        gt=0,
        description="Tape simulator: bytes per second one rule recalls; a file takes size/bandwidth.",
    )
    tape_failure_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Tape simulator: probability that one transfer attempt of a file fails.",
    )
    tape_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Tape simulator: transfer attempts per file; a file failing all of them is given "
        "up, and the tasks waiting for it count it as failed.",
    )
    tape_seed: int = Field(
        0,
        description="Tape simulator: seed of the generator deciding which attempts fail (with the rule "
        "and file), so a run is reproducible.",
    )
    brokerage_pilot_activity_hours: float = Field(
        3.0,
        gt=0,
        description="A queue no pilot or Harvester talked to for this long (no job dispatched or "
        "updated there, no worker or worker-node report) is left out of brokerage while another queue "
        "can take the work (catchall allow_no_pilot and test tasks are exempt), and its queued "
        "analysis jobs are re-brokered (see job_rebrokerage_analysis_hours).",
    )
    job_rebrokerage_analysis_hours: float = Field(
        3.0,
        gt=0,
        description="ANALY_TIMEOUT: an analysis job defined, assigned or activated for this long at a "
        "queue without recent pilot activity is re-brokered (kill code 51, its task makes a new job "
        "elsewhere).",
    )
    job_rebrokerage_high_priority_hours: float = Field(
        4.0,
        gt=0,
        description="A job with priority 800 or more, activated or starting for this long at a queue "
        "that started no job within job_rebrokerage_no_job_start_hours (or is offline or in test), is "
        "re-brokered (kill code 51).",
    )
    job_rebrokerage_no_job_start_hours: float = Field(
        2.0,
        gt=0,
        description="A queue where no job started for this long counts as inactive for the re-brokerage "
        "of high-priority jobs.",
    )
    job_fast_rebrokerage_min_queued: int = Field(
        100,
        ge=1,
        description="Fast re-brokerage: a queue is overloaded for a global share when it holds more "
        "activated production jobs of that share than this and than job_fast_rebrokerage_ratio times "
        "its running ones; the excess is re-brokered with kill code 10.",
    )
    job_fast_rebrokerage_ratio: float = Field(
        2.0,
        gt=0,
        description="Fast re-brokerage: the queued / running ratio (per queue and global share) above "
        "which a queue is overloaded.",
    )
    job_fast_rebrokerage_min_age_minutes: float = Field(
        60.0,
        gt=0,
        description="Fast re-brokerage moves only jobs activated at least this long ago.",
    )
    job_merge_orphan_minutes: float = Field(
        30.0,
        gt=0,
        description="A merge job at least this old whose pre-merge jobs have all left 'merging' (killed, "
        "reassigned) is killed with code 52; its unmerged files are not merged again.",
    )
    job_es_toolong_hours: float = Field(
        24.0,
        gt=0,
        description="An event-service consumer running this long (since its start) is killed with code 2 and "
        "jobSubStatus 'es_toolong'; its unfinished event ranges go back to its jobset.",
    )
    job_es_toolong_min_priority: int = Field(
        900,
        description="Only event-service consumers with at least this currentPriority are killed for running "
        "too long (domain.md §7.4).",
    )
    retry_rules_file: Path | None = Field(
        None,
        description="JSON file of automatic retry rules (error code -> no retry, limited retries, more "
        "memory, more walltime, fewer inputs per job; format in docs/retry-rules.md), checked when the "
        "server starts. Default: the built-in rules (bamboo/logic/retry_rules.json).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Directory of the file cache: uploaded cache files (sandboxes), HPO checkpoints, and "
        "JEDI logs in its jedilog/ subdirectory, all served as /cache/<name>. Default: cache inside the "
        "home. Several replicas must share it (a network file system).",
    )
    idds_url: str = Field(
        "",
        description="Base URL of the iDDS REST API the idds/* endpoints relay to (e.g. "
        "https://idds.example.org:443/idds). Empty: iDDS is not configured and they answer so.",
    )
    idds_auth_type: Literal["x509_proxy", "oidc"] = Field(
        "x509_proxy", description="How this server authenticates to iDDS: an X.509 proxy or an OIDC token."
    )
    idds_x509_proxy: Path | None = Field(
        None,
        description="The server's X.509 proxy for iDDS (idds_auth_type x509_proxy). Default: the iDDS "
        "client's own lookup (X509_USER_PROXY, /tmp/x509up_u<uid>).",
    )
    idds_oidc_token_file: Path | None = Field(
        None,
        description='JSON file with the server\'s OIDC token for iDDS as {"id_token": ...} '
        "(idds_auth_type oidc).",
    )
    idds_vo: str = Field("", description="VO sent to iDDS with an OIDC token.")
    idds_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Timeout of one relayed iDDS call.")

    secrets_key_file: Path | None = Field(
        None,
        description="Keyring that encrypts user secrets, proxies and tokens at rest (AES-GCM); created "
        "mode 0600 on first start; `bamboo secrets rotate-key` adds a key to it and retires the old one. "
        "Default: secrets-keyring.json in the home. Every server sharing a database needs the same file.",
    )
    secrets_key: SecretStr | None = Field(
        None,
        description="Instead of the keyring file: one base64-encoded 32-byte AES key (never logged). "
        "Keys given this way cannot be rotated by `bamboo secrets rotate-key`.",
    )
    secrets_max_value_bytes: int = Field(
        64 * 1024, ge=1, le=16 * 1024 * 1024, description="Largest value of one user secret (UTF-8 bytes)."
    )
    secrets_max_user_bytes: int = Field(
        1024 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="Largest total of one user's secrets (their keys and values, UTF-8 bytes).",
    )
    secrets_max_keys: int = Field(100, ge=1, le=10000, description="Most secrets one user may keep.")
    pilot_secrets_owner: str | None = Field(
        None,
        description="Compact user name whose secrets every dispatched job carries as pilotSecrets (also "
        "in pilot/update_job answers). Unset: no pilotSecrets.",
    )
    public_https_url: str | None = Field(
        None,
        description="This server's HTTPS base URL as pilots reach it (behind a TLS-terminating proxy: the "
        "proxy's), e.g. https://bamboo.example.org:25443. Sent as myproxy with the proxy keys of "
        "pilot/acquire_jobs (get_proxy_key): pilots fetch the owner's proxy from there with "
        "creds/get_proxy. Default: the scheme, host and port the calling pilot used.",
        pattern=r"^https://[^\s/?#]+(/[^\s?#]*)?$",
        max_length=512,
    )
    key_pair_dir: Path | None = Field(
        None,
        description="Directory of key files served by creds/get_key_pair, one file per key named by the "
        "key name. Unset: every key is missing.",
    )
    token_keys_file: Path | None = Field(
        None,
        description='JSON file {"<client name>": ["<key>", ...]} of token keys, latest last: '
        "creds/get_token_key serves the latest, creds/get_access_token requires one of them from "
        "clients listed there. Read when a request needs it.",
    )
    upload_temp_dir: Path | None = Field(
        None,
        description="Where multipart uploads are spooled while they arrive, before they are checked and "
        "moved into the cache: uploads never sit in memory. Default: the directory upload-tmp inside the "
        "home; best on the cache's file system.",
    )
    cache_host: str | None = Field(
        None,
        description="Host name recorded for uploaded cache files and answered by validate_cache_file "
        "(FOUND:<host>:<name>); panda-client then fetches and uploads there. Default: the host name the "
        "uploading client used to reach this server.",
    )
    public_url: str | None = Field(
        None,
        description="Base URL (http(s)://host[:port][/path]) at which pilots and workers reach this server. "
        "User analysis tasks that name no transformation (prun's) run <public_url>/trf/user/runGen-00-00-02 "
        "(and buildGen-00-00-01 for their build). Default: the task's sourceURL, the server the client "
        "uploaded the sandbox to.",
    )
    file_cache_max_age_days: float = Field(
        7.0,
        gt=0,
        description="The cleaner deletes cache files, JEDI logs and HPO checkpoints not modified for this "
        "long, with their registry rows (upstream's 7 days; touch_cache_file keeps a file alive).",
    )
    file_cache_user_quota_bytes: int = Field(
        20 * 1024**3,
        ge=0,
        description="Most bytes of registered cache files one user may hold (sum of the sizes of the "
        "user's registered files); an upload that would pass it is refused. 0: no quota.",
    )
    file_cache_clean_period_seconds: float = Field(
        3600.0,
        gt=0,
        le=86400,
        description="How often the cleaner looks for expired cache files when it found none the last time.",
    )
    storage_dir: Path | None = Field(
        None,
        description="Bamboo's local storage of dataset files, at Rucio's deterministic paths "
        "(<scope parts>/<md5[0:2]>/<md5[2:4]>/<lfn>): `bamboo data upload` copies files in, the built-in "
        "worker and the PanDA pilot's mv copy tool stage job inputs from it and outputs and log tarballs "
        "to it, `bamboo data get` copies them out. Default: storage inside the home.",
    )
    local_worker: bool = Field(
        False,
        description="`bamboo serve` also runs a built-in worker (`bamboo worker`) as a child process "
        "for local_worker_queue, talking HTTPS to this server; it stops with the server.",
    )
    local_worker_queue: str = Field(
        "LOCAL", min_length=1, max_length=128, description="The queue whose jobs the local worker runs."
    )
    local_worker_slots: int = Field(
        1, ge=1, le=64, description="Jobs the local worker runs at the same time."
    )
    worker_heartbeat_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How often the built-in worker (`bamboo worker`) reports each running job "
        "(pilot/update_job, status running) and reads the server's command for it (tobekilled, "
        "softkill). Keep it well below job_heartbeat_timeout_minutes.",
    )
    worker_poll_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How long the built-in worker waits before asking for jobs again after the "
        "server had none for it (a finished job frees its slot and asks at once).",
    )
    log_level: str = Field("info", description="Python logging level name.")
    machine_heartbeat_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often every server and agents process renews its row in the machines table "
        "(async_process requests go to the processes whose row is fresh).",
    )
    machine_alive_seconds: float = Field(
        60.0,
        gt=0,
        description="A process whose heartbeat is older than this is not alive: no request is sent to "
        "it, and the async_process requests it held are failed (grep) or handed to another process "
        "(sleep_echo). Keep it several heartbeat periods long.",
    )
    machine_forget_hours: float = Field(
        24.0,
        gt=0,
        description="The row of a process silent this long is deleted from the machines table.",
    )
    allow_async_request: list[str] = Field(
        default_factory=list,
        description="Compact user names (as in task userName) allowed to submit async_process grep "
        "requests (upstream's allowAsyncRequest).",
    )
    log_dir: Path | None = Field(
        None,
        description="Directory of the panda-*.log / panda-*.gz files that async_process grep requests "
        "search on each machine. Bamboo does not write there itself; point it at where the process "
        "output is collected. Unset: every grep request fails on this machine.",
    )
    async_request_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="How many processes may start one sleep_echo request before it is failed; an "
        "attempt is lost when its process stops heartbeating while running it.",
    )
    async_request_retention_days: float = Field(
        7.0,
        gt=0,
        description="async_process requests and their results are deleted this long after submission.",
    )
    async_grep_max_lines: int = Field(
        1000, ge=1, le=1_000_000, description="Most matching lines one grep result keeps (then truncated)."
    )
    async_grep_max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Most bytes of matching lines one grep result keeps (then truncated).",
    )
    async_grep_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest one grep may read its file; the lines found by then are kept, marked truncated.",
    )

    @field_validator("carousel_destinations")
    @classmethod
    def _valid_rses(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", item):
                raise ValueError(f"invalid RSE name {item!r}: 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("public_url")
    @classmethod
    def _valid_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"public_url {value!r} must be http(s)://host[:port][/path]")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ip_network(item, strict=False)
        return value

    @cached_property
    def trusted_proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(ip_network(item, strict=False) for item in self.trusted_proxies)

    @property
    def effective_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"

    @property
    def upload_temp_path(self) -> Path:
        return (self.upload_temp_dir or self.home / "upload-tmp").resolve()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'bamboo.db').resolve()}"

    @property
    def effective_storage_dir(self) -> Path:
        return (self.storage_dir or self.home / "storage").resolve()

    @property
    def effective_secrets_key_file(self) -> Path:
        return self.secrets_key_file or self.home / "secrets-keyring.json"


def settings_markdown() -> str:
    """The settings reference page (docs/settings.md), generated from the fields above."""
    lines = [
        "# Settings",
        "",
        "Every setting is read from the environment variable `BAMBOO_<NAME>` (lists as JSON, e.g.",
        "`BAMBOO_PRODUCTION_DNS='[\"/CN=prodsys\"]'`); `bamboo serve` options override them.",
        "This page is generated from `src/bamboo/config.py` by `python -m bamboo.config > docs/settings.md`.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = str(default) if not isinstance(default, list) else ("[" + ", ".join(map(str, default)) + "]")
        lines.append(f"| `BAMBOO_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
