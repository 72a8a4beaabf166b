"""Job parameters from the template and output file names (domain.md §4.4, §4.5)."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bamboo.logic.build_jobs import BuildState, lib_dataset_name, with_lib
from bamboo.logic.errors import InvalidInput
from bamboo.logic.jobparams import MAX_TEMPLATE_BYTES, JobContext, output_file_name, render
from bamboo.logic.secondary import Attached, with_streams

TASK_ID = 10000001


def ctx(**kwargs: object) -> JobContext:
    kwargs.setdefault("streams", {})
    kwargs.setdefault("task_id", TASK_ID)
    return JobContext(**kwargs)  # type: ignore[arg-type]


# --- output_file_name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "serial", "expected"),
    [
        # clients.md §7: the log of the end-to-end task
        (
            "user.testuser.e2e.0001.log.$JEDITASKID.${SN}.log.tgz",
            1,
            "user.testuser.e2e.0001.log.10000001.000001.log.tgz",
        ),
        ("mc.gen.example.v1.EVNT._${SN}.root", 1, "mc.gen.example.v1.EVNT._000001.root"),
        ("user.jdoe.$JEDITASKID._${SN/P}.out.root", 42, "user.jdoe.10000001._000042.out.root"),
        ("x.${SN}.root", 1234567, "x.1234567.root"),
        ("x.${SN:03d}.root", 7, "x.007.root"),
        ("x.${SN:d}.root", 7, "x.7.root"),
        ("x.${SN:x}.root", 255, "x.ff.root"),
        ("x.${SN:>5}.root", 7, "x.    7.root"),
        ("${SN}-${SN/P}", 3, "000003-000003"),
        ("plain.root", 3, "plain.root"),
        # other placeholders are not the file name's business
        ("x.${MIDDLENAME}.${SN}", 3, "x.${MIDDLENAME}.000003"),
        ("x.$PANDAID.$JOBSETID.${SN}", 3, "x.$PANDAID.$JOBSETID.000003"),
    ],
)
def test_output_file_name(template: str, serial: int, expected: str) -> None:
    assert output_file_name(template, serial, task_id=TASK_ID) == expected


def test_output_file_name_with_job_ids() -> None:
    name = output_file_name("x.$PANDAID.$JOBSETID.${SN}", 3, task_id=1, jobset_id=12, panda_id=7)
    assert name == "x.00007.000012.000003"


@pytest.mark.parametrize("spec", ["s", "1000d", ".3f", "e", "%d", "5.2d", ",n"])
def test_output_file_name_bad_format(spec: str) -> None:
    with pytest.raises(InvalidInput, match="not an integer format"):
        output_file_name(f"x.${{SN:{spec}}}", 1, task_id=1)


# --- the generation example (domain.md §1.7) ------------------------------------------------

EVGEN_TEMPLATE = (
    "--beamEnergy=6800 --maxEvents=${MAXEVENTS} --firstEvent=${FIRSTEVENT} "
    "--randomSeed=${RNDMSEED} --outputFile=${OUTPUT0}"
)


@pytest.mark.parametrize("k", range(10))
def test_generation_example_jobs(k: int) -> None:
    serial = k + 1
    job = ctx(
        streams={
            "OUTPUT0": [output_file_name("mc.gen.example.v1.EVNT._${SN}.root", serial, task_id=TASK_ID)],
            "LOG0": [output_file_name("mc.gen.example.v1.log._${SN}.log.tgz", serial, task_id=TASK_ID)],
        },
        serial=serial,
        max_events=1000,
        skip_events=1000 * k,
        first_event=1 + 1000 * k,
        random_seed=serial + 1000,
    )
    assert render(EVGEN_TEMPLATE, job) == (
        f"--beamEnergy=6800 --maxEvents=1000 --firstEvent={1 + 1000 * k} --randomSeed={1001 + k} "
        f"--outputFile=mc.gen.example.v1.EVNT._{k + 1:06d}.root"
    )


def test_generation_example_first_and_last() -> None:
    first = ctx(
        streams={"OUTPUT0": ["mc.gen.example.v1.EVNT._000001.root"]},
        max_events=1000,
        first_event=1,
        random_seed=1001,
    )
    assert render(EVGEN_TEMPLATE, first).endswith(
        "--firstEvent=1 --randomSeed=1001 --outputFile=mc.gen.example.v1.EVNT._000001.root"
    )
    last = ctx(
        streams={"OUTPUT0": ["mc.gen.example.v1.EVNT._000010.root"]},
        max_events=1000,
        first_event=9001,
        random_seed=1010,
    )
    assert render(EVGEN_TEMPLATE, last).endswith(
        "--firstEvent=9001 --randomSeed=1010 --outputFile=mc.gen.example.v1.EVNT._000010.root"
    )


def test_analysis_example_job() -> None:
    # the template refine() makes of domain.md §1.6
    template = (
        '-j "" --sourceURL ${SURL} -r . -a sources.1234abcd.tar.gz '
        "-o \"{'out.root': 'user.jdoe.$JEDITASKID._${SN/P}.out.root'}\" "
        '-i "${IN/T}" -p "python%20ana.py "'
    )
    job = ctx(
        streams={
            "IN": ["DAOD.1.root", "DAOD.2.root"],
            "OUTPUT0": ["user.jdoe.10000001._000007.out.root"],
            "LOG0": ["user.jdoe.ana.v1.log.10000001.000007.log.tgz"],
        },
        serial=7,
        source_url="https://pandaserver.example.org:25443",
    )
    assert render(template, job) == (
        '-j "" --sourceURL https://pandaserver.example.org:25443 -r . -a sources.1234abcd.tar.gz '
        "-o \"{'out.root': 'user.jdoe.10000001._000007.out.root'}\" "
        "-i \"['DAOD.1.root', 'DAOD.2.root']\" -p \"python%20ana.py \""
    )


# --- decorators -----------------------------------------------------------------------------

FILES = ["data.000001.root", "data.000002.root", "data.000010.root"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${IN}", "data.[000001,000002,000010].root"),
        ("${IN/L}", "data.000001.root,data.000002.root,data.000010.root"),
        ("${IN/S}", "data.000001.root data.000002.root data.000010.root"),
        ("${IN/L/S}", "data.000001.root data.000002.root data.000010.root"),
        ("${IN/A}", "'data.000001.root','data.000002.root','data.000010.root'"),
        ("${IN/L/A}", "'data.000001.root','data.000002.root','data.000010.root'"),
        ("${IN/L/A/S}", "'data.000001.root' 'data.000002.root' 'data.000010.root'"),
        ("${IN/T}", "['data.000001.root', 'data.000002.root', 'data.000010.root']"),
        ("${IN/F}", "tmpin_data.container"),
        ("${IN/E}", "data.000001.root,data.000002.root,data.000010.root"),
        ("${IN[0:2]}", "data.[000001,000002].root"),
        ("${IN[1:]/L}", "data.000002.root,data.000010.root"),
        ("${IN[:1]}", "data.000001.root"),
        ("${IN[-1:]}", "data.000010.root"),
        ("${IN[0:2]/T}", "['data.000001.root', 'data.000002.root']"),
        ("${IN,DBR/L}", "data.000001.root,data.000002.root,data.000010.root,dbr.tar.gz"),
        ("${DBR}", "dbr.tar.gz"),
        ("${DBR/F}", "tmpin_DBR"),
        ("${ENC/E}", "a b&c.root"),
        ("${ENC}", "a%20b%26c.root"),
        ("${SEQNUMBER}", "5"),
        ("${SEQNUMBER/P}", "000005"),
        ("${SEQNUMBER/M[#*100]}", "500"),
        ("${SEQNUMBER/M[(# - 1) * 10 + 1]}", "41"),
        ("${SEQNUMBER/M[#//2]}", "2"),
        ("${SEQNUMBER/M[#%3]}", "2"),
        ("${SEQNUMBER/M[#**2]}", "25"),
        ("${SEQNUMBER/M[-#]}", "-5"),
        ("${SEQNUMBER/M[#/2]}", "2.5"),
        ("${SEQNUMBER/M[# + 0.5]}", "5.5"),
        ("${RNDMSEED/M[#+1]}", "1002"),
        ("${OUTPUT0}", "out._000003.root"),
        ("${LOG0}", "log._000003.tgz"),
        (
            "--in=${IN/L} --out=${OUTPUT0}",
            "--in=data.000001.root,data.000002.root,data.000010.root --out=out._000003.root",
        ),
    ],
)
def test_decorators(template: str, expected: str) -> None:
    job = ctx(
        streams={
            "IN": FILES,
            "DBR": ["dbr.tar.gz"],
            "ENC": ["a%20b%26c.root"],
            "SEQNUMBER": ["5"],
            "OUTPUT0": ["out._000003.root"],
            "LOG0": ["log._000003.tgz"],
        },
        random_seed=1001,
        stream_datasets={"IN": "scope:data.container/"},
    )
    assert render(template, job) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${SN}", "7"),
        ("${SN/P}", "000007"),
        ("${SN:04d}", "0007"),
        ("${RNDMSEED}", "1007"),
        ("${MAXEVENTS}", "250"),
        ("${SKIPEVENTS}", "750"),
        ("${FIRSTEVENT}", "751"),
        ("${SURL}", "https://cache.example.org"),
        ("${SURL/E}", "https://cache.example.org"),
        ("${ATTEMPTNR}", "2"),
        ("$JEDITASKID", "10000001"),
        ("$JOBSETID", "000042"),
        ("$PANDAID", "20000001"),
        ("id=$PANDAID.", "id=20000001."),
    ],
)
def test_scalars(template: str, expected: str) -> None:
    job = ctx(
        serial=7,
        random_seed=1007,
        max_events=250,
        skip_events=750,
        first_event=751,
        source_url="https://cache.example.org",
        attempt_nr=2,
        jobset_id=42,
        panda_id=20000001,
    )
    assert render(template, job) == expected


def test_small_ids_are_padded() -> None:
    assert render("$JOBSETID $PANDAID", ctx(jobset_id=1, panda_id=12)) == "000001 00012"


def test_unset_scalars_stay() -> None:
    template = "${SN} ${SN/P} ${RNDMSEED} ${MAXEVENTS} ${SKIPEVENTS} ${FIRSTEVENT} ${SURL} $JOBSETID $PANDAID"
    assert render(template, ctx()) == template


def test_attempt_nr_defaults_to_zero() -> None:
    assert render("${ATTEMPTNR}", ctx()) == "0"


def test_empty_scalar_is_replaced() -> None:
    assert render("a${SURL}b", ctx(source_url="")) == "ab"


def test_not_placeholder_syntax_is_kept() -> None:
    template = "echo ${x:-y} ${} ${a b} $HOME ${1abc} ${TRN:OUTPUT}"
    assert render(template, ctx()) == template


def test_replacements_are_not_rescanned() -> None:
    job = ctx(streams={"IN": ["odd.${SEQNUMBER}.root"]})
    assert render("${IN}", job) == "odd.${SEQNUMBER}.root"


def test_server_ids_inside_inserted_names_are_filled() -> None:
    # output names keep $JEDITASKID until the job is stored, as upstream does
    job = ctx(streams={"OUTPUT0": ["user.jdoe.$JEDITASKID._000001.root"]})
    assert render("-o ${OUTPUT0}", job) == "-o user.jdoe.10000001._000001.root"


# --- the compact form -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lfns", "expected"),
    [
        (["one.root"], "one.root"),
        (["a1.root", "a2.root"], "a[1,2].root"),
        (["f_10.root", "f_11.root"], "f_[10,11].root"),
        (["data.1.root", "data.12.root", "data.3.root"], "data.[1,12,3].root"),
        (["x1", "x22"], "x[1,22]"),
        (["11", "12"], "[11,12]"),
        (["1a", "2a"], "[1,2]a"),
        # attempt suffixes are dropped for the compact form
        (["EVNT._000001.pool.root.1", "EVNT._000002.pool.root.2"], "EVNT._[000001,000002].pool.root"),
        # not only digits differ: the full list
        (["a.root", "b.root"], "a.root,b.root"),
        (["f_1a.root", "f_2b.root"], "f_1a.root,f_2b.root"),
        (["a_1.x.root", "a_2.x.root", "a_3.y.root"], "a_1.x.root,a_2.x.root,a_3.y.root"),
        # the same name twice once the suffix is gone: the full list
        (["a.root.1", "a.root.2"], "a.root.1,a.root.2"),
        (["a.1", "a.2"], "a.1,a.2"),
        (["dup.root", "dup.root"], "dup.root,dup.root"),
    ],
)
def test_compact(lfns: list[str], expected: str) -> None:
    assert render("${IN}", ctx(streams={"IN": lfns})) == expected


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("-i ${IN}", r"unresolved placeholder \$\{IN\} in job parameters"),
        ("${IN/L}", r"unresolved placeholder \$\{IN/L\}"),
        ("${SEQNUMBER}", r"unresolved placeholder \$\{SEQNUMBER\}"),
        ("${LIB}", r"unresolved placeholder \$\{LIB\}"),
        ("${OUTPUT1}", r"unresolved placeholder \$\{OUTPUT1\}"),
        ("${EMPTY}", r"unresolved placeholder \$\{EMPTY\}"),
        ("${ONE[3:5]}", r"unresolved placeholder \$\{ONE\[3:5\]\}"),
        ("${IN/X}", r"unresolved placeholder \$\{IN/X\}"),
        ("${IN:-x}", r"unresolved placeholder \$\{IN:-x\}"),
        ("${SEQNUMBER[0]}", r"unresolved placeholder"),
        ("${TWO/M[#+1]}", "/M needs exactly one value"),
        ("${ONE/M[#+1]/M[#]}", "/M needs exactly one value"),
        ("${ONE/M[#+1]}", "/M needs a number, got 'a.root'"),
        ("${NUM/M[__import__('os')]}", "may only use numbers"),
        ("${NUM/M[abs(#)]}", "may only use numbers"),
        ("${NUM/M[#.real]}", "may only use numbers"),
        ("${NUM/M['a']}", "may only use numbers"),
        ("${NUM/M[True]}", "may only use numbers"),
        ("${NUM/M[2#]}", "may only use numbers"),
        ("${NUM/M[1j]}", "may only use numbers"),
        ("${NUM/M[# < 2]}", "may only use numbers"),
        ("${NUM/M[#+]}", "cannot evaluate"),
        ("${NUM/M[#/0]}", "cannot evaluate"),
        ("${NUM/M[#%0]}", "cannot evaluate"),
        ("${NUM/M[9**9**9]}", "too large"),
        ("${NUM/M[(10**200)*(10**200)*(10**200)]}", "out of range"),
        ("${NUM/M[10.0**400]}", "cannot evaluate"),
        ("${NUM/M[(-8)**0.5]}", "out of range"),
        ("${NUM/M[" + "1+" * 200 + "1]}", "longer than 256"),
        ("${ONE/P}", "/P needs an integer"),
        ("${SN:q}", "not an integer format"),
    ],
)
def test_errors(template: str, message: str) -> None:
    job = ctx(streams={"ONE": ["a.root"], "TWO": ["a.root", "b.root"], "EMPTY": [], "NUM": ["3"]}, serial=1)
    with pytest.raises(InvalidInput, match=message):
        render(template, job)


def test_template_size_limit() -> None:
    render("x" * MAX_TEMPLATE_BYTES, ctx())
    with pytest.raises(InvalidInput, match="longer than 65536 bytes"):
        render("x" * (MAX_TEMPLATE_BYTES + 1), ctx())
    with pytest.raises(InvalidInput, match="longer than"):
        render("é" * (MAX_TEMPLATE_BYTES // 2 + 1), ctx())


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidInput) as info:
        render("${IN" + "X" * 1000 + "}", ctx())
    assert len(info.value.message) < 200


# --- properties -----------------------------------------------------------------------------

lfn = st.text(alphabet="abcXYZ019._-:%", min_size=1, max_size=12)
template_text = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "${",
                "}",
                "$",
                "/",
                "[",
                "]",
                ":",
                ",",
                "#",
                "IN",
                "OUT",
                "NUM",
                "SN",
                "SEQNUMBER",
                "RNDMSEED",
                "/L",
                "/T",
                "/M[",
                "/P",
                "/E",
                "/F",
                "**",
                "9",
                "0",
                "-1",
                "$JEDITASKID",
                "$PANDAID",
                " ",
            ]
        ),
        st.text(max_size=3),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(template=template_text, files=st.lists(lfn, max_size=4))
def test_render_only_raises_invalid_input(template: str, files: list[str]) -> None:
    job = ctx(streams={"IN": files, "OUT": ["o.root"], "NUM": ["12"]}, serial=3, random_seed=9, panda_id=5)
    try:
        result = render(template, job)
    except InvalidInput:
        return
    assert isinstance(result, str)


@settings(max_examples=100, deadline=None)
@given(files=st.lists(st.text(alphabet="abcXYZ019._-:%'", min_size=1, max_size=12), min_size=1, max_size=6))
def test_list_forms_round_trip(files: list[str]) -> None:
    job = ctx(streams={"IN": files})
    assert render("${IN/L}", job).split(",") == files
    assert render("${IN/S}", job).split(" ") == files
    assert ast.literal_eval(render("${IN/T}", job)) == files


@settings(max_examples=100, deadline=None)
@given(files=st.lists(lfn, min_size=2, max_size=6, unique=True))
def test_compact_form_expands_to_the_files(files: list[str]) -> None:
    text = render("${IN}", ctx(streams={"IN": files}))
    if text == ",".join(files):
        return
    match = re.fullmatch(r"(.*)\[([0-9,]+)\](.*)", text)
    assert match is not None
    head, numbers, tail = match.groups()
    expanded = [f"{head}{number}{tail}" for number in numbers.split(",")]
    assert expanded == [re.sub(r"\.[0-9]+$", "", name) for name in files]


@settings(max_examples=100, deadline=None)
@given(value=st.integers(-(10**6), 10**6), offset=st.integers(-1000, 1000))
def test_arithmetic_matches_python(value: int, offset: int) -> None:
    job = ctx(streams={"NUM": [str(value)]})
    assert render(f"${{NUM/M[(# + {offset}) * 3 - #]}}", job) == str((value + offset) * 3 - value)


# --- secondary streams and the lib file ---------------------------------------------------------


def test_secondary_streams_fill_their_placeholders() -> None:
    dataset = {"streamName": "IN2", "containerName": None, "datasetName": "mc.minbias"}
    rows = [{"lfn": "mb.1.root"}, {"lfn": "mb.2.root"}, {"lfn": "mb.1.root"}]
    job = with_streams(ctx(streams={"IN": ["a.root"]}), [Attached(dataset, rows, tracked=True)])
    assert render('-i ${IN} --mb "${IN2/T}" --list ${IN2/F} --n ${IN,IN2/L}', job) == (
        "-i a.root --mb \"['mb.1.root', 'mb.2.root']\" --list tmpin_mc.minbias --n a.root,mb.1.root,mb.2.root"
    )
    # a job left without secondary files is refused, as any input placeholder without files
    empty = with_streams(ctx(streams={"IN": ["a.root"]}), [Attached(dataset, [], tracked=True)])
    with pytest.raises(InvalidInput, match=re.escape("unresolved placeholder ${IN2/T}")):
        render("${IN2/T}", empty)


def test_lib_placeholder_only_when_the_task_builds() -> None:
    built = BuildState(ready=True, lib={"lfn": "panda.lib._000001.7.lib.tgz"}, dataset={"datasetName": "x"})
    assert render("-l ${LIB}", with_lib(ctx(), built)) == "-l panda.lib._000001.7.lib.tgz"
    with pytest.raises(InvalidInput):
        # without a build the placeholder stays, and an unknown stream is refused
        render("-l ${LIB} ${IN}", with_lib(ctx(), BuildState(ready=True)))


def test_lib_dataset_name() -> None:
    moment = datetime(2026, 12, 3, 7, 5, 9, 123, tzinfo=UTC)
    assert lib_dataset_name(10000042, moment) == "panda.1203070509.000123.lib._10000042"
    assert lib_dataset_name(42, moment).endswith(".lib._000042")


# --- merge templates ------------------------------------------------------------------------


def test_merge_pairs_list_each_merged_stream_with_its_unmerged_files_in_stream_order() -> None:
    streams = {
        "TRN_OUTPUT0": ["um.a.1", "um.a.2"],
        "TRN_OUTPUT10": ["um.k.1"],
        "TRN_OUTPUT1": ["um.b.1", "um.b.2"],
        "OUTPUT0": ["a.1"],
        "OUTPUT1": ["b.1"],
        "OUTPUT10": ["k.1"],
        "TRN_LOG0": ["um.log.1", "um.log.2"],
        "LOG0": ["log.1"],
    }
    assert render("-r . ${TRN_OUTPUT:OUTPUT} ${TRN_LOG:LOG}", ctx(streams=streams)) == (
        "-r . um.a.1,um.a.2:a.1 um.b.1,um.b.2:b.1 um.k.1:k.1 um.log.1,um.log.2:log.1"
    )


def test_a_merged_stream_without_unmerged_files_is_left_out() -> None:
    streams = {"TRN_OUTPUT0": ["um.a"], "OUTPUT0": ["a"], "OUTPUT1": ["b"], "LOG0": ["log"]}
    assert render("${TRN_OUTPUT:OUTPUT}|${TRN_LOG:LOG}|", ctx(streams=streams)) == "um.a:a||"


def test_the_merged_log_reads_the_unmerged_logs_of_the_first_log_stream() -> None:
    streams = {"TRN_LOG0": ["um.l1", "um.l2"], "LOG0": ["own.log"], "LOG_MERGE": ["merged.log"]}
    assert render("${TRN_LOG_MERGE:LOG_MERGE} --log=${LOG0}", ctx(streams=streams)) == (
        "um.l1,um.l2:merged.log --log=own.log"
    )
