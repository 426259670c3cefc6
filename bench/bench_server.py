"""Server: `labq server`'s API latency and the dashboard's page loads against a
queue of 100,000 jobs, and the remote CLI beside the local one.

The database is bench_cli's: one experiment 'big' of N jobs, 60% succeeded
and 5% failed through real attempts with metrics, 20 running, the rest
pending, and one scheduler pass (fake nodes) that wrote the start estimates.
A real `labq server` (uvicorn, one process) serves it on loopback.

* API: each route asked over a new HTTP connection with a token (as the CLI
  and a browser's first request do), median and max of REPS after one warm-up.
* CLI: `labq --server URL queue|results big` and the same verbs on the head's
  LABQ_HOME, side by side in one run (subprocesses of the installed script),
  median of 3: the ratio is what going through the server costs.
* Pages: headless Chromium (Debian's, through selenium), logged in; the time
  from navigation to the page's data on screen (its first table row, or its
  chart), median of 3 loads after one warm-up.  Skipped with a note when
  Chromium is absent.

  python bench/bench_server.py [--quick] [--n N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.bench_cli import populate, scheduler_pass  # noqa: E402

NAME = "server"
TITLE = "Server: API latency and page loads at 100k jobs"
REPS = 7
CLI_REPS = 3
PAGE_REPS = 3
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _get(url: str, token: str) -> float:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
    return time.perf_counter() - t0


def time_route(url: str, token: str, reps: int) -> dict:
    _get(url, token)  # warm: the server's first query of a table pays for SQLite's page cache
    walls = [_get(url, token) for _ in range(reps)]
    return {"walls": walls, "median_s": common.median(walls), "max_s": max(walls)}


def time_cli(args: list[str], env: dict, reps: int = CLI_REPS) -> dict:
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        proc = subprocess.run([common.LABQ_CLI, *args], env=env, capture_output=True, text=True, timeout=300)
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"labq {' '.join(args)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return {"walls": walls, "median_s": common.median(walls)}


def time_pages(url: str, token: str, job_id: int) -> dict | str:
    """Seconds from navigation to data on screen, per page; or why not measured."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "no Chromium here (apt-get install chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="lqb-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--enable-unsafe-swiftshader", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    pages = [("queue", "/", "#queue tbody tr"),
             ("queue, page 600", "/?offset=30000", "#queue tbody tr"),
             ("experiments", "/experiments", "#experiments tbody tr"),
             ("experiment results (table)", "/experiments/big", "#results tbody tr"),
             ("experiment results (parallel coordinates of 1,000 rows)", "/experiments/big", "#parcoords .parcoords"),
             ("a job", f"/jobs/{job_id}", "#attempts tbody tr"),
             ("nodes", "/nodes", "#nodes tbody tr"),
             ("usage", "/usage", "table tbody tr")]
    out = {}
    try:
        driver.get(url + "/login")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
        WebDriverWait(driver, 30).until(lambda d: "/login" not in d.current_url)
        for label, path, ready in pages:
            walls = []
            for rep in range(PAGE_REPS + 1):
                driver.get("about:blank")
                t0 = time.perf_counter()
                driver.get(url + path)
                WebDriverWait(driver, 300, poll_frequency=0.02).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, ready))
                if rep:  # the first load fills the browser's cache (plotly.js is 4.8 MB)
                    walls.append(time.perf_counter() - t0)
            out[label] = {"walls": walls, "median_s": common.median(walls)}
            print(f"  page {label}: {out[label]['median_s']:.2f}s", flush=True)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, help="jobs in the database (default 100000; quick 2000)")
    args = p.parse_args(argv)
    n = args.n or (2000 if args.quick else 100_000)
    data: dict = {"n": n}
    with tempfile.TemporaryDirectory(prefix="lqb-server-") as d:
        d = Path(d)
        home = d / "home"
        code = common.write_noop_spec(d, "sweep100", 100, cpu=0.5).parent
        print(f"populating a database with {n:,} jobs", flush=True)
        data["populate"] = populate(home, code, n)
        scheduler_pass(home)
        from scheduler.server.tokens import TokenBook

        token = TokenBook(home).create("bench")
        port = common.free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABQ_", "RAY_"))}
        env.update({"LABQ_HOME": str(home), "COLUMNS": "200"})
        server = subprocess.Popen([common.LABQ_CLI, "server", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/api/health", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            first_job = 1  # a fresh database numbers the jobs from 1
            routes = [("queue, first 50", "/api/v1/queue?limit=50"),
                      ("queue, 50 at offset 30,000", "/api/v1/queue?limit=50&offset=30000"),
                      ("experiments", "/api/v1/experiments?limit=50"),
                      ("results, best 50", "/api/v1/results/big?limit=50"),
                      ("results, 50 at offset 50,000", "/api/v1/results/big?limit=50&offset=50000"),
                      ("results, best 1,000 (parallel coordinates)", "/api/v1/results/big?limit=1000"),
                      ("results, 50 sorted by a param", "/api/v1/results/big?limit=50&sort=b"),
                      ("status of one job", f"/api/v1/status/{first_job}"),
                      ("nodes", "/api/v1/nodes"), ("usage, 7 days", "/api/v1/usage?since=7d&by=both")]
            data["api"] = {}
            for label, route in routes:
                data["api"][label] = r = time_route(url + route, token, REPS if n <= 100_000 else 3)
                print(f"  GET {route}: {r['median_s'] * 1000:.0f} ms", flush=True)
            remote = {**env, "LABQ_TOKEN": token}
            remote.pop("LABQ_HOME")
            data["cli"] = {}
            for label, verb in (("queue", ["queue"]), ("results big", ["results", "big"])):
                local = time_cli(verb, env)
                far = time_cli(["--server", url, *verb], remote)
                data["cli"][label] = {"local": local, "server": far, "ratio": far["median_s"] / local["median_s"]}
                print(f"  labq {label}: local {local['median_s']:.2f}s, --server {far['median_s']:.2f}s", flush=True)
            data["pages"] = time_pages(url, token, first_job)
        finally:
            server.terminate()
            server.wait(timeout=30)
    rows = [[label, r["median_s"] * 1000, r["max_s"] * 1000] for label, r in data["api"].items()]
    md = (f"{n:,} jobs in the database; `labq server` on loopback, one uvicorn process. API: a new connection "
          f"per request, median and max of {REPS} after a warm-up, milliseconds.\n\n"
          + common.table(["route", "median ms", "max ms"], rows))
    md += "\n\nCLI, side by side (median of 3 subprocess runs, seconds):\n\n" + common.table(
        ["verb", "on the head", "--server", "ratio"],
        [[label, c["local"]["median_s"], c["server"]["median_s"], c["ratio"]] for label, c in data["cli"].items()])
    if isinstance(data["pages"], str):
        md += f"\n\nPages: not measured: {data['pages']}."
    else:
        md += (f"\n\nPages in headless Chromium, navigation to data on screen, median of {PAGE_REPS} after a "
               "warm-up load, seconds:\n\n"
               + common.table(["page", "median s"], [[k, v["median_s"]] for k, v in data["pages"].items()]))
    common.finish(args, NAME, TITLE, md, data)
    return data


if __name__ == "__main__":
    main()
