"""Which test makes each call of each real client: panda-client 2.2.0's ``Client`` functions and pbook
commands, Harvester's communicator methods (clients.md §3.2) and the pilot's calls (§4.2, §4.4).

test_coverage.py holds these lists against the installed packages and Bamboo's endpoints, so they
cannot go stale; README.md beside this file is generated from them:
``python -m tests.compat.coverage > tests/compat/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

E2E = "tests/e2e"
COMPAT = "tests/compat"
REAL_CLIENTS = f"{E2E}/test_real_clients.py"
NO_INPUT_TO_DONE = f"{REAL_CLIENTS}::test_no_input_task_from_panda_client_to_done"
RETRY_AND_CHAIN = f"{REAL_CLIENTS}::test_input_task_with_a_retry_then_a_chained_task"
TASK_COMMANDS = f"{E2E}/test_task_commands_clients.py"
KILL_FINISH = f"{TASK_COMMANDS}::test_kill_soft_finish_and_hard_finish"
PAUSE_RETRY = f"{TASK_COMMANDS}::test_pause_resume_priority_retry_with_new_parameters_and_reactivate"
PBOOK_E2E = f"{TASK_COMMANDS}::test_pbook_show_kill_finish_and_retry"
SECRETS = f"{E2E}/test_creds_clients.py::test_panda_client_and_pbook_secrets"
HARVESTER_CREDS = f"{E2E}/test_creds_clients.py::test_harvester_credential_calls"
FILE_CACHE = f"{E2E}/test_file_cache_clients.py::test_put_file_reuses_the_sandbox_and_serves_it"
HARVESTER_LOOP = f"{E2E}/test_harvester_loop.py::test_harvester_loop"
CLIENT = f"{COMPAT}/test_panda_client.py"
READS = f"{CLIENT}::test_task_reads"
DIRECT_JOBS = f"{CLIENT}::test_direct_jobs_debug_mode_and_kill"
COMMANDS = f"{CLIENT}::test_task_commands_recovery_events_and_workflows"
UNSERVED = f"{CLIENT}::test_unserved_client_calls_fail_as_panda_client_reads_them"
PBOOK = f"{COMPAT}/test_pbook.py"
SHOW = f"{PBOOK}::test_show_variants"
PBOOK_FILES = f"{PBOOK}::test_job_metadata_reload_input_and_recovery"
KILL_ALL = f"{PBOOK}::test_kill_all_and_soft_finish"
DEBUG = f"{PBOOK}::test_debug_needs_the_production_role"
PBOOK_WORKFLOWS = f"{PBOOK}::test_workflow_commands_fail_visibly"
LEGACY_CLIENT = f"{CLIENT}::test_legacy_calls_as_panda_client_makes_them"
LEGACY_PILOT = f"{E2E}/test_legacy_pilot.py::test_pilot_gets_runs_and_finishes_a_job"
REAL_PILOT = f"{E2E}/test_real_pilot.py::test_real_pilot_runs_a_job_without_and_a_job_with_input"
LEGACY_API = "tests/api/test_legacy_methods.py"
RESOURCE = f"{COMPAT}/test_resource_side.py"
HARVESTER_MISC = f"{RESOURCE}::test_harvester_liveness_metrics_dialogs_and_statistics"
HARVESTER_UPLOADS = f"{RESOURCE}::test_harvester_credentials_and_uploads"
EVENTS = f"{RESOURCE}::test_harvester_event_ranges"
PILOT_CYCLE = f"{RESOURCE}::test_next_pilot_job_cycle"
PILOT_TOKEN = f"{RESOURCE}::test_next_pilot_token_refresh_and_secrets"

NO_SERVER_CALL = "no server call"
NOT_SERVED = "Bamboo does not serve this endpoint"


@dataclass(frozen=True)
class Call:
    """What one client function or command sends (paths under the server's root) and which tests
    make it; ``note`` says why a call no test makes is left out."""

    urls: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    note: str = ""


def v1(*functions: str) -> tuple[str, ...]:
    return tuple(f"api/v1/{function}" for function in functions)


def legacy(*functions: str) -> tuple[str, ...]:
    return tuple(f"server/panda/{function}" for function in functions)


# Every public function of pandaclient.Client 2.2.0 (its *_internal request builders are listed
# under the public function that calls them).
PANDA_CLIENT: dict[str, Call] = {
    "hello": Call(v1("system/is_alive"), (NO_INPUT_TO_DONE,)),
    "get_cert_attributes": Call(v1("system/get_attributes"), (READS,)),
    "insertTaskParams": Call(v1("task/submit"), (NO_INPUT_TO_DONE, RETRY_AND_CHAIN)),
    "getTaskStatus": Call(v1("task/get_status"), (NO_INPUT_TO_DONE,)),
    "getTaskParamsMap": Call(v1("task/get_task_parameters"), (PAUSE_RETRY,)),
    "getPandaIDsWithTaskID": Call(v1("task/get_job_ids"), (NO_INPUT_TO_DONE,)),
    "getJediTaskDetails": Call(v1("task/get_details"), (READS,)),
    "getJobIDsJediTasksInTimeRange": Call(v1("task/get_tasks_modified_since"), (READS,)),
    "get_tasks_detailed_info_since": Call(v1("task/get_tasks_detailed_info_since"), (NO_INPUT_TO_DONE,)),
    "get_job_descriptions": Call(v1("task/get_job_descriptions"), (READS,)),
    "get_files_in_datasets": Call(v1("task/get_datasets_and_files"), (PAUSE_RETRY,)),
    "get_task_details_json": Call(v1("task/get_detailed_info"), (READS,)),
    "get_parent_detailed_info": Call(v1("task/get_parent_detailed_info"), (READS,)),
    "killTask": Call(v1("task/kill"), (KILL_FINISH,)),
    "finishTask": Call(v1("task/finish"), (KILL_FINISH,)),
    "retryTask": Call(v1("task/retry"), (PAUSE_RETRY,)),
    "reactivateTask": Call(v1("task/reactivate"), (PAUSE_RETRY,)),
    "resumeTask": Call(v1("task/resume"), (PAUSE_RETRY,)),
    "pauseTask": Call(v1("task/pause"), (PAUSE_RETRY,)),
    "reload_input": Call(v1("task/reload_input"), (COMMANDS,)),
    "increase_attempt_nr": Call(v1("task/increase_attempts"), (COMMANDS,)),
    "submitJobs": Call(v1("job/submit"), (DIRECT_JOBS,)),
    "getJobStatus": Call(v1("job/get_description"), (NO_INPUT_TO_DONE, DIRECT_JOBS)),
    "getFullJobStatus": Call(v1("job/get_description_incl_archive"), (READS, DIRECT_JOBS)),
    "killJobs": Call(v1("job/kill"), (DIRECT_JOBS,)),
    "setDebugMode": Call(v1("job/set_debug_mode"), (DIRECT_JOBS,)),
    "getUserJobMetadata": Call(v1("job/get_metadata_for_analysis_jobs"), (READS,)),
    "putFile": Call(v1("file_server/validate_cache_file", "file_server/upload_cache_file"), (FILE_CACHE,)),
    "getFile": Call(("cache/<name>",), (FILE_CACHE,)),
    "set_user_secret": Call(v1("creds/set_user_secrets"), (SECRETS,)),
    "get_user_secrets": Call(v1("creds/get_user_secrets"), (SECRETS,)),
    "send_file_recovery_request": Call(v1("file_server/upload_file_recovery_request"), (COMMANDS,)),
    "get_events_status": Call(v1("event/get_event_range_statuses"), (READS,)),
    "update_events": Call(v1("event/update_event_ranges"), (COMMANDS,)),
    "submit_workflow": Call(v1("workflow/submit_workflow_raw_request"), (COMMANDS,)),
    "submit_workflow_tmp": Call(v1("workflow/submit_workflow_raw_request"), (COMMANDS,)),
    "get_workflow_details": Call(v1("workflow/get_workflow_details"), (UNSERVED,), NOT_SERVED),
    "requestEventPicking": Call(
        legacy("putEventPickingRequest"),
        (f"{LEGACY_API}::test_put_event_picking_request_as_panda_client_sends_it",),
        "panda-client 2.2.0 compares the raw answer's bytes with True and exits: it fails whatever "
        "the server answers",
    ),
    "call_idds_command": Call(legacy("relay_idds_command"), (LEGACY_CLIENT,)),
    "call_idds_user_workflow_command": Call(legacy("execute_idds_workflow_command"), (LEGACY_CLIENT,)),
    "send_workflow_request": Call(legacy("put_workflow_request"), (LEGACY_CLIENT,)),
    "get_new_token": Call(note="OIDC device flow against the identity provider"),
    "build_grid_setup_command": Call(note=NO_SERVER_CALL),
    "bytes_decode": Call(note=NO_SERVER_CALL),
    "decode_special_cases": Call(note=NO_SERVER_CALL),
    "dump_log": Call(note=NO_SERVER_CALL),
    "getDN": Call(note=NO_SERVER_CALL),
    "get_token_string": Call(note=NO_SERVER_CALL),
    "get_user_name_from_token": Call(note=NO_SERVER_CALL),
    "hide_sensitive_info": Call(note=NO_SERVER_CALL),
    "http_request_decorator": Call(note=NO_SERVER_CALL),
    "is_https": Call(note=NO_SERVER_CALL),
    "setCacheServer": Call(note=NO_SERVER_CALL),
    "useDevServer": Call(note="points the client at CERN's development server"),
    "useIntrServer": Call(note="points the client at CERN's integration server"),
    "use_oidc": Call(note=NO_SERVER_CALL),
    "use_x509_no_grid": Call(note=NO_SERVER_CALL),
}

# Every command of pbook 2.2.0 (pandaclient.PBookScript).
PBOOK_COMMANDS: dict[str, Call] = {
    "help": Call(note=NO_SERVER_CALL),
    "show": Call(v1("task/get_tasks_detailed_info_since"), (PBOOK_E2E, SHOW)),
    "showl": Call(v1("task/get_tasks_detailed_info_since"), (SHOW,)),
    "kill": Call(v1("task/get_tasks_detailed_info_since", "task/kill"), (PBOOK_E2E, KILL_ALL)),
    "finish": Call(v1("task/get_tasks_detailed_info_since", "task/finish"), (PBOOK_E2E, KILL_ALL)),
    "retry": Call(v1("task/get_tasks_detailed_info_since", "task/retry"), (PBOOK_E2E,)),
    "debug": Call(v1("job/set_debug_mode"), (DEBUG,)),
    "get_user_job_metadata": Call(v1("job/get_metadata_for_analysis_jobs"), (PBOOK_FILES,)),
    "reload_input": Call(v1("task/reload_input"), (PBOOK_FILES,)),
    "recover_lost_files": Call(
        v1("task/get_tasks_detailed_info_since", "file_server/upload_file_recovery_request"), (PBOOK_FILES,)
    ),
    "show_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "show_native_workflow": Call(v1("workflow/get_workflow_details"), (PBOOK_WORKFLOWS,), NOT_SERVED),
    "kill_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "retry_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "finish_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "pause_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "resume_workflow": Call(legacy("execute_idds_workflow_command"), (PBOOK_WORKFLOWS,)),
    "set_secret": Call(v1("creds/set_user_secrets"), (SECRETS,)),
    "delete_secret": Call(v1("creds/set_user_secrets"), (SECRETS,)),
    "delete_all_secrets": Call(v1("creds/set_user_secrets"), (SECRETS,)),
    "list_secrets": Call(v1("creds/get_user_secrets"), (SECRETS,)),
    "generate_credential": Call(note="interactive OIDC device flow"),
}

# Harvester's PandaCommunicator methods of clients.md §3.2 (Harvester is not installable here: the
# tests send its requests as its communicator builds them).
HARVESTER: dict[str, Call] = {
    "check_panda": Call(v1("system/is_alive"), (HARVESTER_MISC,)),
    "is_alive": Call(v1("harvester/heartbeat"), (HARVESTER_LOOP,)),
    "get_jobs": Call(v1("pilot/acquire_jobs"), (NO_INPUT_TO_DONE, HARVESTER_LOOP)),
    "update_jobs": Call(v1("pilot/update_jobs_bulk"), (NO_INPUT_TO_DONE, HARVESTER_LOOP)),
    "check_jobs": Call(v1("job/get_status"), (NO_INPUT_TO_DONE, HARVESTER_LOOP)),
    "update_workers": Call(v1("harvester/update_workers"), (HARVESTER_LOOP,)),
    "update_worker_stats": Call(v1("harvester/report_worker_statistics"), (HARVESTER_LOOP,)),
    "send_dialog_messages": Call(v1("harvester/add_dialogs"), (HARVESTER_MISC,)),
    "update_service_metrics": Call(v1("harvester/update_service_metrics"), (HARVESTER_MISC,)),
    "get_commands": Call(v1("harvester/acquire_commands"), (HARVESTER_LOOP,)),
    "ack_commands": Call(v1("harvester/acknowledge_commands"), (HARVESTER_LOOP,)),
    "get_max_worker_id": Call(v1("harvester/get_current_worker_id"), (HARVESTER_LOOP,)),
    "get_worker_stats_from_panda": Call(v1("harvester/get_worker_statistics"), (HARVESTER_LOOP,)),
    "get_event_ranges": Call(v1("event/acquire_event_ranges"), (EVENTS,)),
    "update_event_ranges": Call(v1("event/update_event_ranges"), (EVENTS,)),
    "check_event_availability": Call(v1("event/get_available_event_range_count"), (EVENTS,)),
    "get_proxy": Call(v1("creds/get_proxy"), (HARVESTER_CREDS,)),
    "get_token_key": Call(v1("creds/get_token_key"), (HARVESTER_CREDS,)),
    "get_key_pair": Call(v1("creds/get_key_pair"), (HARVESTER_UPLOADS,)),
    "get_resource_types": Call(v1("metaconfig/get_resource_types"), (HARVESTER_MISC,)),
    "get_job_stats": Call(v1("statistics/active_job_stats_by_site"), (HARVESTER_MISC,)),
    "get_job_stats_new": Call(v1("statistics/active_job_detailed_stats_by_site"), (HARVESTER_MISC,)),
    "upload_file": Call(v1("file_server/upload_jedi_log"), (HARVESTER_UPLOADS,)),
    "upload_checkpoint": Call(v1("file_server/upload_hpo_checkpoint"), (HARVESTER_UPLOADS,)),
    "clear_checkpoint": Call(v1("file_server/delete_hpo_checkpoint"), (HARVESTER_UPLOADS,)),
    "download_checkpoint": Call(("cache/hpo_cp_<task>_<point>",), (HARVESTER_UPLOADS,)),
}

# The pilot: the next pilot's v1 calls (clients.md §4.4) and pilot 3.11.5.1's (§4.2): the legacy
# ones are tested beside the legacy API (tests/api/test_legacy_methods.py) and with the pilot's
# request2 (tests/e2e/test_legacy_pilot.py); the real pilot on PyPI reads its queue's schedconfig.
PILOT: dict[str, Call] = {
    "acquire_jobs": Call(v1("pilot/acquire_jobs"), (PILOT_CYCLE,)),
    "update_job": Call(v1("pilot/update_job"), (PILOT_CYCLE,)),
    "get_job_status": Call(v1("pilot/get_job_status"), (PILOT_CYCLE,)),
    "get_resource_types": Call(v1("metaconfig/get_resource_types"), (PILOT_CYCLE,)),
    "update_worker_node": Call(v1("pilot/update_worker_node"), (PILOT_CYCLE,)),
    "update_worker_node_gpu": Call(v1("pilot/update_worker_node_gpu"), (PILOT_CYCLE,)),
    "get_access_token": Call(v1("creds/get_access_token"), (PILOT_TOKEN,)),
    "get_user_secrets": Call(v1("creds/get_user_secrets"), (PILOT_TOKEN,)),
    "getJob (3.11.5.1)": Call(legacy("getJob"), (LEGACY_PILOT,)),
    "updateJob (3.11.5.1)": Call(legacy("updateJob"), (LEGACY_PILOT,)),
    "getStatus (3.11.5.1)": Call(legacy("getStatus"), (LEGACY_PILOT,)),
    "updateWorkerPilotStatus (3.11.5.1)": Call(
        legacy("updateWorkerPilotStatus"), (f"{LEGACY_API}::test_update_worker_pilot_status",)
    ),
    "setDebugMode (3.11.5.1)": Call(
        legacy("setDebugMode"), (f"{LEGACY_API}::test_set_debug_mode_then_update_job_carries_debug",)
    ),
    "getResourceTypes (3.11.5.1)": Call(
        legacy("getResourceTypes"), (f"{LEGACY_API}::test_get_resource_types_as_the_pilot_parses_them",)
    ),
    "get_access_token (3.11.5.1)": Call(
        legacy("get_access_token"), (f"{LEGACY_API}::test_get_access_token_as_the_pilot_refreshes",)
    ),
    "getProxy (3.11.5.1)": Call(legacy("getProxy"), (f"{LEGACY_API}::test_get_proxy",)),
    "getKeyPair (3.11.5.1)": Call(legacy("getKeyPair"), (f"{LEGACY_API}::test_get_key_pair",)),
    "get_user_secrets (3.11.5.1)": Call(
        legacy("get_user_secrets"), (f"{LEGACY_API}::test_get_user_secrets_as_the_pilot_reads_them",)
    ),
    "getEventRanges (3.11.5.1)": Call(
        legacy("getEventRanges"), (f"{LEGACY_API}::test_event_ranges_as_the_pilot_event_service_asks",)
    ),
    "updateEventRanges (3.11.5.1)": Call(
        legacy("updateEventRanges"), (f"{LEGACY_API}::test_event_ranges_as_the_pilot_event_service_asks",)
    ),
    "queuedata (3.11.5.1)": Call(("cache/schedconfig/<queue>.all.json",), (REAL_PILOT,)),
}

CLIENTS: dict[str, dict[str, Call]] = {
    "panda-client 2.2.0 `pandaclient.Client`": PANDA_CLIENT,
    "pbook 2.2.0 commands": PBOOK_COMMANDS,
    "Harvester `PandaCommunicator` (requests rebuilt; clients.md §3)": HARVESTER,
    "Pilot (next pilot's v1 calls rebuilt, clients.md §4.4; 3.11.5.1's legacy calls, §4.2)": PILOT,
}

HEADER = """# Compatibility suite

The real clients' calls against one real `bamboo serve` per test module and database (SQLite and
PostgreSQL). panda-client and pbook are the installed 2.2.0 packages; Harvester's communicator and
the next pilot cannot be installed here, so their requests are rebuilt with their transports and
field names. Pilot 3.11.5.1's legacy calls are tested beside the legacy API (tests/api, tests/e2e).
Generated from `coverage.py` (`python -m tests.compat.coverage > tests/compat/README.md`);
`test_coverage.py` fails when this list and the clients or the server disagree.
"""


def render() -> str:
    lines = [HEADER]
    for title, calls in CLIENTS.items():
        counts = {
            "covered": sum(1 for call in calls.values() if call.tests and call.note != NOT_SERVED),
            "not served": sum(1 for call in calls.values() if call.note == NOT_SERVED),
            "no call to Bamboo": sum(1 for call in calls.values() if not call.urls),
        }
        summary = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
        lines += [f"## {title}", "", f"{len(calls)} listed: {summary}.", ""]
        lines += ["| Call | Server path | Tests | Note |", "|---|---|---|---|"]
        for name, call in calls.items():
            urls = "<br>".join(f"`/{url}`" for url in call.urls)
            tests = "<br>".join(f"`{test.removeprefix('tests/')}`" for test in call.tests)
            lines.append(f"| `{name}` | {urls} | {tests} | {call.note} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
