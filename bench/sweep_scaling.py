"""Wall time of the same 8 small trials (grid sampler) on one PostgreSQL study: 1 worker vs 2 workers.

Run from the repository root: python bench/sweep_scaling.py [STEPS] (default 1000 steps per trial;
writes under /tmp/scal; needs PostgreSQL)."""
import subprocess, sys, time, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from sweepkit import postgres_server, new_database, tiny_search
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
root = Path("/tmp/scal"); root.mkdir(exist_ok=True)
from decoder.data import load_corpus
corpus = root / "small.txt"; corpus.write_text(load_corpus("mysterious-island")[20_000:60_000])
space = {"model.n_blocks": {"type": "int", "low": 1, "high": 2},
         "training.lr": {"type": "categorical", "choices": [0.001, 0.002, 0.003, 0.004]}}
def one(url, workers, tag):
    path = tiny_search(root / f"{tag}.yaml", corpus, tag, space, sampler="grid")
    path.write_text(path.read_text().replace("max_steps: 20", f"max_steps: {STEPS}")
                    .replace("eval_interval: 5", f"eval_interval: {STEPS // 4}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "decoder", "sweep", str(path), "--storage", url, "--quiet",
                               "--no-report", "--runs-dir", str(root / "runs"), "--heartbeat", "2"],
                              cwd=root, env=env, stdout=open(root / f"{tag}-{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(workers)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    print(f"{tag}: {workers} worker(s), exit {codes}, wall {wall:.1f} s", flush=True)
    return wall
with postgres_server() as base:
    results = []
    for i, workers in enumerate([1, 2, 1, 2]):
        url = new_database(base, f"scal{i}")
        results.append((workers, one(url, workers, f"scal{i}-{workers}w")))
print(results)
