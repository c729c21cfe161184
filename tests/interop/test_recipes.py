"""The manual's examples and the documented dispersal recipe, run as shell scripts that
call ``fspl``: once with the real fspl, once with fspl-gw in its place on PATH."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .util import TOOLS, path_env

MANUAL = r"""
set -e
mkdir -p src/sub && printf 'one\n' > src/a && printf 'two\n' > src/sub/b
fspl queue-init -q queue
# tar -cpf - /usr/local | fspl prepare -s ~/state -i - | ssh remote queue-write -q ~/queue
tar -cf - src | fspl prepare -s state -i - | fspl queue-write -q queue
tar -cf - src | fspl prepare -s state -i - -- extra | gzip -c > tmp.gz
fspl queue-init -q zqueue
fspl queue-write -q zqueue < tmp.gz
FSPL_SET_FOO=bar fspl prepare -s state -- hithere | gzip -c | fspl queue-write -q zqueue
fspl queue-ls -q queue | sed 's/fspl-[0-9a-f-]*\.fspl/NAME/; s/  *[0-9T:+-]*  */ TIME /' > ls.txt
fspl queue-info -q zqueue -j 3 -d zcat | grep -v -e _CTIME_ -e _FILENAME -e FULLPATH > info.txt
fspl queue-ls -q zqueue -d zcat | wc -l > zls.txt
fspl queue-get-next -q queue > next.txt
mkdir out && (cd out && fspl queue-process -q ../queue tar -- -xf -)
fspl queue-set-next -q zqueue 2
fspl queue-process -q zqueue -d 'gzip -dc' --on-error delete sh -- -c 'echo "$FSPL_SEQ $FSPL_SET_FOO"; tar -tf - 2>/dev/null | sort || true' > zrun.txt
fspl queue-get-next -q queue >> next.txt
fspl gen-filename | grep -Eqx 'fspl-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.fspl'
fspl gen-uuid | grep -Eqx '[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}'
fspl prepare-get-next -s state > pnext.txt
find out -type f | sort | xargs cat > extracted.txt
ls zqueue/jobs | wc -l > zleft.txt
"""

DISPERSE = r"""
set -e
fspl queue-init -q incoming
fspl queue-init -q worker
for i in 1 2 3 4 5; do
  printf 'job %s\n' "$i" | FSPL_SET_I=$i fspl prepare -s seq -i - | fspl queue-write -q incoming
done
fspl queue-process -q incoming --ignore-payload sh -- -c 'ln "$FSPL_JOB_FULLPATH" "worker/jobs/$FSPL_JOB_FILENAME"'
ls incoming/jobs | wc -l > incoming-left.txt
fspl queue-ls -q worker | tail -n +2 | awk '{print $1}' > worker-ls.txt
fspl queue-process -q worker --order-by=Timestamp sh -- -c 'echo "$FSPL_SEQ $FSPL_SET_I $(cat)"' > worker-run.txt
ls worker/jobs | wc -l > worker-left.txt
fspl queue-get-next -q incoming > next.txt
fspl queue-get-next -q worker >> next.txt
"""


def run_script(tool: str, base: Path, script: str) -> dict[str, bytes]:
    work = base / tool
    work.mkdir(parents=True)
    r = subprocess.run(["sh", "-c", script], cwd=work, env=path_env(tool, base), capture_output=True,
                       timeout=120)
    assert r.returncode == 0, (tool, r.stderr.decode(errors="replace"))
    return {p.name: p.read_bytes() for p in sorted(work.glob("*.txt"))}


@pytest.mark.parametrize("name,script", [("manual", MANUAL), ("disperse", DISPERSE)])
def test_recipe_same_with_fspl_gw(tmp_path: Path, name: str, script: str) -> None:
    res = {t: run_script(t, tmp_path, script) for t in TOOLS}
    assert res["fspl"] == res["gw"]
    out = res["gw"]
    if name == "manual":
        assert out["extracted.txt"] == b"one\ntwo\n"
        assert out["next.txt"] == b"1\n2\n"
        assert out["pnext.txt"] == b"4\n"
        assert b"FSPL_SEQ=3\n" in out["info.txt"] and b"FSPL_SET_FOO=bar\n" in out["info.txt"]
        assert b"FSPL_PARAM_1=hithere\n" in out["info.txt"]
        assert out["zls.txt"].strip() == b"3"
        assert out["zleft.txt"].strip() == b"0"
        assert out["zrun.txt"].startswith(b"2 \nsrc/\nsrc/a\n") and b"3 bar\n" in out["zrun.txt"]
    else:
        assert out["incoming-left.txt"].strip() == b"0"
        assert out["worker-ls.txt"] == b"1\n2\n3\n4\n5\n"
        assert out["worker-run.txt"] == b"".join(b"%d %d job %d\n" % (i, i, i) for i in range(1, 6))
        assert out["worker-left.txt"].strip() == b"0"
        assert out["next.txt"] == b"6\n1\n"


def test_shim_really_runs_fspl_gw(tmp_path: Path) -> None:
    for tool, want in (("fspl", b"filespooler 1.2"), ("gw", b"fspl-gw")):
        r = subprocess.run(["sh", "-c", "fspl --version"], env=path_env(tool, tmp_path),
                           capture_output=True, timeout=30)
        assert want in r.stdout
    r = subprocess.run(["sh", "-c", "fspl --version"], env=path_env("fspl", tmp_path),
                       capture_output=True, timeout=30)
    assert b"fspl-gw" not in r.stdout
