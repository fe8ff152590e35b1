"""Hostile command lines and files against the CLI (issue 17), property-based (hypothesis).

Each case is a sub-command (every leaf of `inkloop`'s own parser but `serve`, which runs until
stopped) with a random subset of its flags, each given an edge or garbage value of its type
(huge and negative numbers, nan/inf, empty, NUL bytes, the lone surrogates that bytes which are not
UTF-8 arrive as, very long text), and hostile files where it reads one (`feedback import`, `rm train
--from/--eval`, `eval --prompts`, `simulate --prompts-path`): malformed JSON/JSONL, wrong types,
huge and 5,000-digit numbers, deep nesting, NUL bytes, non-UTF-8, a directory, nothing. The data
directory is a seeded copy (requests, ratings, a published version), a fresh path, or a file.

Every case runs `app.main(argv)` in-process and must end with exit code 0, or a non-zero code
with one `inkloop ...: error: ...` line on stderr (argparse's usage and a file's offending lines
may come with it) -- never an exception, a traceback or a logged one -- and a rejected case must
leave the data directory as it was. A few hostile command lines also run as `python app.py`
subprocesses (the serve ones included).

    PYTHONPATH=. python benchmarks/cli_fuzz.py [--cases 2000] [--seed 0] [--subprocess-cases 12]

tests/test_cli_fuzz.py runs a small subset in the normal suite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "benchmarks")) if p not in sys.path]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SKIP = {("serve",)}
"""Sub-commands not run in-process (serve listens until stopped: its hostile flags run as subprocesses)."""
HEAVY = {("learn",), ("simulate",), ("eval",), ("rl", "train"), ("rm", "train"), ("suggest",)}
"""They load models and then work for a while: the tiny model only with a broken file (else a
model directory that cannot load), so that an accepted case ends in seconds."""
FILE_DESTS = {"file", "from_files", "eval", "prompts", "prompts_path"}
OUT_DESTS = {"out", "save_json"}
CASE_SECONDS = 20.0


class CaseTimeout(BaseException):
    """A case ran past CASE_SECONDS (an accepted request for a lot of work, not a crash)."""


# ----------------------------------------------------------------------------- the parser's shape
def leaves(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable sub-command of `inkloop` and its parser."""
    import app

    parser = parser or app.build_parser()
    out = {}
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    for name, p in subs[0].choices.items():
        out.update(leaves(p, (*path, name)))
    return out


# ----------------------------------------------------------------------------- strategies
def strategies():
    from hypothesis import strategies as st

    ints = st.one_of(st.integers(-3, 12), st.sampled_from(["0", "-1", "99999999999999999999", "1e5", "0x10", "", "x",
                                                           " 3", "1_000", "٣", "9" * 5000]))
    floats = st.one_of(st.floats(-10, 10), st.sampled_from(["nan", "inf", "-inf", "1e309", "1e-320", "-0", "", "x",
                                                            "1,5"]))
    undecodable = st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=3)
    texts = st.one_of(st.text(max_size=30), st.builds(lambda a, b: a + b, st.text(max_size=5), undecodable),
                      st.sampled_from(["", " ", "\x00", "a\x00b", "\n\n", "-x", "x" * 30_000, "none", "None", "a,b,,c"]))
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=20))
    value = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
                         max_leaves=6)
    keys = st.sampled_from(["prompt", "chosen", "rejected", "completion", "rating", "label", "margin", "text",
                            "mode", "split", "keywords", "style", "role", "content", "train", "heldout"])
    good = st.one_of(
        st.fixed_dictionaries({"prompt": st.text(max_size=20), "chosen": st.text(max_size=20), "rejected": st.text(max_size=20)}),
        st.fixed_dictionaries({"prompt": st.text(max_size=20), "completion": st.text(max_size=20), "rating": st.integers(0, 6)}),
        st.fixed_dictionaries({"prompt": st.text(max_size=20), "completion": st.text(max_size=20), "label": st.booleans()}),
        st.fixed_dictionaries({"mode": st.sampled_from(["continue", "restyle", "inspire", "x"]), "text": st.text(max_size=20)}))
    broken_line = st.one_of(
        st.dictionaries(keys, value, max_size=5).map(lambda d: json.dumps(d).encode()),
        good.flatmap(lambda d: st.sampled_from(list(d)).map(lambda k: json.dumps({**d, k: None}).encode())),
        st.sampled_from([b"{", b"}", b"[1,", b'{"a":1}}', b"null", b'"s"', b"[]", b"NaN", b"1e999", b"\x00", b"\xff\xfe",
                         b"\xc3\x28", b"[" * 100_000, b'{"completion": "x", "rating": 1' + b"0" * 5000 + b"}",
                         b'{"completion": "x", "rating": 123456789012345678901234567890}',
                         b'{"chosen": "a", "rejected": "b", "margin": 1' + b"0" * 400 + b"}",
                         b'{"completion": "x", "rating": 1e999}', b'{"prompt": {"role": 1}, "completion": "x", "label": true}']))
    good_line = good.map(lambda d: json.dumps(d).encode())

    def join(lines, sep, bom):
        return (b"\xef\xbb\xbf" if bom else b"") + sep.join(lines)

    broken_file = st.builds(join, st.lists(st.one_of(good_line, broken_line), min_size=1, max_size=6).filter(
        lambda ls: any(not _parses(x) for x in ls)), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
    some_file = st.one_of(broken_file, st.builds(join, st.lists(good_line, min_size=1, max_size=6), st.just(b"\n"),
                                                 st.just(False)),
                          st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(keys, value, max_size=3)))
    return st, ints, floats, texts, broken_file, some_file


def _parses(raw: bytes) -> bool:
    try:
        json.loads(raw)
        return True
    except (ValueError, RecursionError):
        return False


@dataclass
class Case:
    argv: list[str]
    files: dict[str, bytes | None] = field(default_factory=dict)
    """name under the case's folder -> content (None: a directory)."""
    data: str = "seeded"
    """seeded | fresh | file"""
    command: tuple[str, ...] = ()
    """The sub-command's words (--data-dir goes right after them)."""


def case_strategy(commands: dict[tuple[str, ...], argparse.ArgumentParser]):
    st, ints, floats, texts, broken_file, some_file = strategies()
    names = sorted(k for k in commands if k not in SKIP)

    @st.composite
    def case(draw) -> Case:
        path = draw(st.sampled_from(names))
        parser = commands[path]
        files: dict[str, bytes | None] = {}
        broken = False

        def a_file(dest: str) -> str:
            nonlocal broken
            kind = draw(st.sampled_from(["broken", "broken", "broken", "some", "missing", "dir", "empty"]))
            name = f"{dest}-{len(files)}.jsonl" + (".gz" if draw(st.integers(0, 19)) == 0 else "")
            if kind == "missing":
                return "{case}/" + name
            files[name] = None if kind == "dir" else b"" if kind == "empty" else draw(broken_file if kind == "broken" else some_file)
            broken |= kind in ("broken", "dir", "empty")
            return "{case}/" + name

        def a_value(act) -> list[str]:
            dest = act.dest
            if dest == "model":
                return ["{model}"]
            if dest in FILE_DESTS:
                return [a_file(dest)]
            if dest in OUT_DESTS:
                return [draw(st.sampled_from(["{case}/out", "{case}/out/deeper", "{data}", "{data}/versions",
                                              "{data}/exports", "{data}/exports/x", "{case}/afile", "{data}/inkloop.db"]))]
            if act.nargs == 0:
                return []
            if act.choices is not None and draw(st.integers(0, 4)):
                return [str(draw(st.sampled_from(sorted(map(str, act.choices)))))]
            conv = getattr(act.type, "__name__", "")
            if act.type is int or "int" in conv:
                v = draw(ints)
            elif act.type is float:
                v = draw(floats)
            else:
                v = draw(texts)
            return [str(v)]

        argv = list(path)
        opts = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "data_dir")]
        for act in draw(st.lists(st.sampled_from(opts), max_size=6, unique_by=lambda a: a.dest)) if opts else []:
            flag = draw(st.sampled_from(act.option_strings))
            if isinstance(act, argparse.BooleanOptionalAction):
                flag = draw(st.sampled_from([s for s in act.option_strings]))
            argv += [flag, *a_value(act)]
        for act in (a for a in parser._actions if not a.option_strings):
            if draw(st.integers(0, 15)):  # now and then a positional is missing
                argv += a_value(act)
        if draw(st.integers(0, 9)) == 0:
            argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["--zzz", "extra", "-", "--", "-k"])))
        if path in HEAVY and not broken:
            model = draw(st.sampled_from(["{case}/missing-model", "{garbage_model}", "{case}/afile", "Qwen/Qwen2.5-0.5B"]))
        else:
            model = draw(st.sampled_from(["{tiny}", "{tiny}", "{case}/missing-model", "{garbage_model}"]))
        argv = [x.replace("{model}", model) for x in argv]
        if "--model" not in argv:
            argv += ["--model", model]
        data = draw(st.sampled_from(["seeded"] * 6 + ["fresh", "file"]))
        if path == ("learn",) and "--once" not in argv:
            argv.append("--once")  # one check, not a learner that runs until stopped
        return Case(argv + ["--threads", "1"] if "--threads" not in argv else argv, files, data, path)

    return case()


# ----------------------------------------------------------------------------- running a case
def seed_template(root: Path, model_dir: Path) -> Path:
    """A data directory with requests, ratings and a published policy version (a real adapter)."""
    from transformers import AutoModelForCausalLM

    from reward.rl.policy import Policy
    from storage.artifacts import save_version
    from storage.store import Store

    d = root / "template"
    st = Store(d / "inkloop.db")
    for i in range(3):
        req = st.record_request(profile_id="default", mode="continue", text=f"t{i}", options={}, prompt=f"p{i}",
                                policy_version=0, suggestions=["a", "b"])
        st.add_feedback(req.suggestions[0].id, "thumb", 1)
        st.add_feedback(req.suggestions[1].id, "stars", 2)
    pol = Policy.from_base(AutoModelForCausalLM.from_pretrained(str(model_dir)), None)
    save_version(st, d, kind="policy", profile_id="default", writer=pol.save, publish=True)
    st.close()
    return d


def fingerprint(d: Path) -> str:
    """What a rejected command must not change: the database's rows and every other file (not the
    lock files, not SQLite's -wal/-shm). A folder holding nothing but an empty database (no row
    beyond its migrations: what opening a store on a new data directory creates) counts as absent."""
    if not d.exists() or _only_an_empty_database(d):
        return "absent"
    if d.is_file():
        return "file:" + hashlib.sha1(d.read_bytes()).hexdigest()
    h = hashlib.sha1()
    for f in sorted(p for p in d.rglob("*")):
        rel = f.relative_to(d).as_posix()
        if rel.startswith("locks") or rel.endswith(("-wal", "-shm")):
            continue
        h.update(rel.encode())
        if f.name == "inkloop.db":
            con = sqlite3.connect(f"file:{f}?mode=ro", uri=True)
            try:
                for line in con.iterdump():
                    h.update(line.encode("utf-8", "surrogatepass"))
            finally:
                con.close()
        elif f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _only_an_empty_database(d: Path) -> bool:
    if not d.is_dir():
        return False
    rest = [p for p in d.rglob("*") if not p.relative_to(d).as_posix().startswith("locks")
            and not p.name.endswith(("-wal", "-shm")) and p.name != "inkloop.db"]
    if rest or not (d / "inkloop.db").is_file():
        return False
    con = sqlite3.connect(f"file:{d / 'inkloop.db'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        return all(con.execute(f'select count(*) from "{t}"').fetchone()[0] == 0 for t in tables
                   if t != "_migrations" and not t.startswith("sqlite_"))
    finally:
        con.close()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(f"{record.name}: {record.getMessage()[:120]}")


@dataclass
class FuzzReport:
    cases: int = 0
    by_command: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    timeouts: int = 0
    tracebacks: list[str] = field(default_factory=list)
    no_message: list[str] = field(default_factory=list)
    wrote_when_rejected: list[str] = field(default_factory=list)
    subprocess_cases: int = 0
    seconds: float = 0.0

    @property
    def findings(self) -> list[str]:
        return self.tracebacks + self.no_message + self.wrote_when_rejected


def _show(argv: list[str]) -> str:
    return " ".join(repr(a) if len(a) < 60 else repr(a[:40] + "...") for a in argv)[:300]


class Runner:
    """Materialises a Case in a scratch folder and runs it through app.main, checking the rules."""

    def __init__(self, root: Path, model_dir: Path):
        self.root, self.tiny = Path(root), Path(model_dir)
        self.template = seed_template(self.root, self.tiny)
        self.garbage_model = self.root / "garbage-model"
        self.garbage_model.mkdir(exist_ok=True)
        (self.garbage_model / "config.json").write_text("{not json")
        self.log = _Records()
        logging.getLogger().addHandler(self.log)  # app.main's basicConfig then adds no stderr handler
        self.n = 0

    def run(self, case: Case, rep: FuzzReport) -> None:
        import torch

        import app

        self.n += 1
        cdir = self.root / f"case-{self.n}"
        cdir.mkdir()
        for name, content in case.files.items():
            if content is None:
                (cdir / name).mkdir()
            else:
                (cdir / name).write_bytes(content)
        (cdir / "afile").write_text("x")
        data = cdir / "data"
        if case.data == "seeded":
            shutil.copytree(self.template, data)
        elif case.data == "file":
            data.write_text("not a directory")
        subst = {"{case}": str(cdir), "{data}": str(data), "{tiny}": str(self.tiny),
                 "{garbage_model}": str(self.garbage_model)}
        argv = []
        for a in case.argv:
            for k, v in subst.items():
                a = a.replace(k, v)
            argv.append(a)
        argv[len(case.command):len(case.command)] = ["--data-dir", str(data)]  # before any "--" a case may hold
        before = fingerprint(data)
        err, out = io.StringIO(), io.StringIO()
        n_logged = len(self.log.tracebacks)
        cmd = " ".join(case.command)
        rep.by_command[cmd] = rep.by_command.get(cmd, 0) + 1
        rep.cases += 1
        rc: int | None = None
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        cwd = os.getcwd()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = app.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except CaseTimeout:
            rep.timeouts += 1
            return
        except Exception as e:  # noqa: BLE001 - the finding
            rep.tracebacks.append(f"{type(e).__name__}: {str(e)[:150]} <- {_show(argv)}")
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            os.chdir(cwd)
            torch.set_num_threads(1)
        text = err.getvalue()
        if "Traceback (most recent call last)" in text or len(self.log.tracebacks) > n_logged:
            what = self.log.tracebacks[n_logged] if len(self.log.tracebacks) > n_logged else text.strip()[-150:]
            rep.tracebacks.append(f"traceback (rc {rc}): {what} <- {_show(argv)}")
        if rc == 0:
            rep.accepted += 1
        else:
            rep.rejected += 1
            errors = [ln for ln in text.splitlines() if ln.startswith("inkloop") and ": error: " in ln]
            if len(errors) != 1:
                rep.no_message.append(f"rc {rc}, {len(errors)} error lines: {text.strip()[-160:]!r} <- {_show(argv)}")
            if fingerprint(data) != before:
                rep.wrote_when_rejected.append(f"rc {rc}: {errors[:1]} <- {_show(argv)}")
        shutil.rmtree(cdir, ignore_errors=True)


def _alarm(signum, frame):
    raise CaseTimeout()


def fuzz(cases: int, root: Path, model_dir: Path, seed: int = 0) -> FuzzReport:
    """`cases` hypothesis cases through app.main (see the module docstring)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    rep = FuzzReport()
    saved = os.environ.get("INKLOOP_DATA_DIR")
    os.environ["INKLOOP_DATA_DIR"] = str(Path(root) / "default-data-dir")  # never the person's ~/.inkloop
    runner = Runner(root, model_dir)
    strategy = case_strategy(leaves())
    t0 = time.perf_counter()

    @hseed(seed)
    @settings(max_examples=cases, database=None, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate])
    @given(case=strategy)
    def run(case: Case) -> None:
        runner.run(case, rep)

    try:
        run()
    finally:
        logging.getLogger().removeHandler(runner.log)
        if saved is None:
            os.environ.pop("INKLOOP_DATA_DIR", None)
        else:
            os.environ["INKLOOP_DATA_DIR"] = saved
    rep.seconds = time.perf_counter() - t0
    return rep


# ----------------------------------------------------------------------------- subprocesses
SUBPROCESS_CASES: list[list[str | bytes]] = [
    ["serve", "--port", "70000"], ["serve", "--port", "-1"], ["serve", "--port", "x"],
    ["serve", "--host", "no-such-host.invalid", "--token", "t0ken-t0ken"], ["serve", "--host", "0.0.0.0"],
    ["status", "--data-dir", "{case}/afile"], ["rate", "1", "--kind", "thumb", "--value", "1"],
    ["suggest", "--mode", "continue", "--text", b"caf\xe9 \xff"], ["feedback", "import", "{case}/deep.jsonl"],
    ["feedback", "import", "{case}/digits.jsonl"], ["rm", "train", "--threads", "-1"],
    ["learner", b"\xffpause"], ["versions", "rollback", "9" * 30], ["export", "--what", "merged", "--out", "{case}/afile"],
]


def subprocess_runs(root: Path, model_dir: Path, limit: int | None = None, timeout: float = 180) -> tuple[int, list[str]]:
    """Hostile command lines as `python app.py` processes: (cases run, findings)."""
    findings = []
    cases = SUBPROCESS_CASES[:limit] if limit else SUBPROCESS_CASES
    for i, argv in enumerate(cases):
        cdir = Path(root) / f"sub-{i}"
        cdir.mkdir(parents=True)
        (cdir / "afile").write_text("x")
        (cdir / "deep.jsonl").write_bytes(b"[" * 100_000 + b"\n")
        (cdir / "digits.jsonl").write_bytes(b'{"completion": "x", "rating": 1' + b"0" * 5000 + b"}\n")
        sub = [os.fsencode(str(a).replace("{case}", str(cdir))) if isinstance(a, str) else a for a in argv]
        if b"--data-dir" not in sub:
            sub += [b"--data-dir", os.fsencode(str(cdir / "data"))]
        sub += [b"--model", os.fsencode(str(model_dir))]
        try:
            p = subprocess.run([sys.executable, str(ROOT / "app.py"), *sub], capture_output=True, timeout=timeout, check=False,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                              "INKLOOP_TOKEN": ""})
        except subprocess.TimeoutExpired:
            findings.append(f"ran past {timeout:.0f} s: {sub}")
            continue
        err = p.stderr.decode("utf-8", "replace")
        errors = [ln for ln in err.splitlines() if ln.startswith("inkloop") and ": error: " in ln]
        if "Traceback" in err or p.returncode < 0 or p.returncode == 1:
            findings.append(f"rc {p.returncode} traceback: {err.strip().splitlines()[-1][:160] if err.strip() else ''} <- {sub}")
        elif p.returncode != 0 and len(errors) != 1:
            findings.append(f"rc {p.returncode}, {len(errors)} error lines <- {sub}")
    return len(cases), findings


def print_report(rep: FuzzReport, sub_findings: list[str]) -> None:
    print("\n## CLI fuzzing (hypothesis, in-process app.main; subprocess runs)\n")
    print("| cases | accepted (exit 0) | rejected | ran past the case limit | tracebacks | rejections without "
          "one error line | rejected but wrote | subprocess cases | subprocess findings | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {rep.cases} | {rep.accepted} | {rep.rejected} | {rep.timeouts} | {len(rep.tracebacks)} | "
          f"{len(rep.no_message)} | {len(rep.wrote_when_rejected)} | {rep.subprocess_cases} | {len(sub_findings)} | "
          f"{rep.seconds:.0f} |")
    print("\ncases by command: " + ", ".join(f"{k} {n}" for k, n in sorted(rep.by_command.items())))
    for name, items in (("traceback", rep.tracebacks), ("no message", rep.no_message),
                        ("rejected but wrote", rep.wrote_when_rejected), ("subprocess", sub_findings)):
        seen = set()
        for x in items:
            key = x.split(" <- ")[0][:60]
            if key not in seen:
                seen.add(key)
                print(f"  {name}: {x}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subprocess-cases", type=int, default=len(SUBPROCESS_CASES))
    a = ap.parse_args(argv)
    from assistant.lm.tiny import save_tiny_lm

    print(f"# inkloop CLI fuzzing (cpu load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_lm(Path(tmp) / "tiny-lm")
        rep = fuzz(a.cases, Path(tmp) / "fuzz", model_dir, a.seed)
        n, sub = subprocess_runs(Path(tmp) / "sub", model_dir, a.subprocess_cases) if a.subprocess_cases else (0, [])
        rep.subprocess_cases = n
    print_report(rep, sub)
    return 1 if rep.findings or sub else 0


if __name__ == "__main__":
    sys.exit(main())
