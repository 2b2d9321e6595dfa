"""What a run leaves behind: CSV files, the log-log plot, and the section of docs/benchmarks.md."""

from __future__ import annotations

import csv

__all__ = ["write_csv", "plot", "headline", "section", "update_doc", "BEGIN", "END", "Results"]

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
SYSTEM_NAMES = {"promql_join": "PromQL join", "postgresql": "PostgreSQL", "streammon": "streammon"}


class Results:
    """The rows of one run, looked up by (size, system, measure)."""

    def __init__(self, rows: list[dict], answers: list[dict], skipped: list[dict]) -> None:
        self.rows, self.answers, self.skipped = rows, answers, skipped
        self._by = {(r["n"], r["system"], r["measure"]): r for r in rows}
        self.sizes = sorted({r["n"] for r in rows} | {s["n"] for s in skipped})

    def add_fresh_batch(self, batch: int) -> None:
        """Derive ``fresh_batch_s``: ``batch`` arrivals at the measured cost per event, plus one scrape or refresh."""
        for n in (n for n in self.sizes if 2 * n >= batch):  # a stream of 2N arrivals holds at least one whole batch
            for system, (per_event, per_batch) in FRESH.items():
                a, b = self.get(n, system, per_event), self.get(n, system, per_batch)
                if a is not None and b is not None:
                    row = {"n": n, "system": system, "measure": "fresh_batch_s", "value": a * 1e-6 * batch + b,
                           "unit": "s", "status": "ok", "note": f"{batch} arrivals x {per_event} + {per_batch}"}
                    self.rows.append(row)
                    self._by[(n, system, "fresh_batch_s")] = row

    def get(self, n: int, system: str, measure: str) -> float | None:
        r = self._by.get((n, system, measure))
        return float(r["value"]) if r and r["status"] == "ok" and r["value"] != "" else None

    def cell(self, n: int, system: str, measure: str, fmt) -> str:
        r = self._by.get((n, system, measure))
        if r is None:
            why = next((s["reason"] for s in self.skipped if s["n"] == n and s["system"] == system), "")
            return "not run" if why else ""
        if r["status"] != "ok":
            return f"**{r['status']}**"
        return fmt(float(r["value"]))


def seconds(x: float) -> str:
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f} ms" if x >= 0.01 else f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.0f} µs"


def size(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def micro(x: float) -> str:
    return f"{x:.1f} µs"


def count(x: float) -> str:
    return f"{x:,.0f}"


def write_csv(path: str, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


LINES = {  # panel -> (label, system, measure, style)
    "Read cumulative accuracy": [
        ("PromQL join (essay), Prometheus API", "promql_join", "query_s:accuracy:cumulative", "o-"),
        ("PostgreSQL join, on demand", "postgresql", "query_s:join:cumulative", "s-"),
        ("PostgreSQL materialized view, read", "postgresql", "query_s:view:cumulative", "s--"),
        ("streammon, Prometheus API", "streammon", "query_s:accuracy:cumulative", "D-"),
        ("streammon, whole /metrics in-process", "streammon", "inprocess_scrape_s", "D:"),
    ],
    "Read accuracy of the last hour": [
        ("PromQL join + time gauge", "promql_join", "query_s:accuracy:1h", "o-"),
        ("PostgreSQL join, on demand", "postgresql", "query_s:join:1h", "s-"),
        ("PostgreSQL materialized view, read", "postgresql", "query_s:view:1h", "s--"),
        ("streammon, Prometheus API", "streammon", "query_s:accuracy:1h", "D-"),
    ],
    "Keep it fresh: absorb one batch, make it readable": [
        ("PromQL join: gauge sets + one scrape", "promql_join", "fresh_batch_s", "o-"),
        ("PostgreSQL: COPY + REFRESH MATERIALIZED VIEW", "postgresql", "fresh_batch_s", "s-"),
        ("streammon: Monitor.process + one scrape", "streammon", "fresh_batch_s", "D-"),
    ],
}
FRESH = {  # what it takes to absorb one batch of arrivals and have the metric readable: per-event part, per-batch part
    "promql_join": ("ingest_us_per_event", "scrape_s"),
    "postgresql": ("ingest_us_per_event", "refresh_last_s"),
    "streammon": ("ingest_us_per_event", "scrape_s"),
}


def plot(results: Results, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"promql_join": "tab:red", "postgresql": "tab:blue", "streammon": "tab:green"}
    fig, axes = plt.subplots(1, len(LINES), figsize=(6 * len(LINES), 5), constrained_layout=True)
    for ax, (panel, lines) in zip(axes, LINES.items()):
        for label, system, measure, style in lines:
            pts = [(n, results.get(n, system, measure)) for n in results.sizes]
            pts = [(n, v) for n, v in pts if v is not None and v > 0]
            if pts:
                ax.plot(*zip(*pts), style, color=colors[system], label=label, markersize=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predictions with feedback (N)")
        ax.set_ylabel("seconds")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(results: Results) -> str:
    """The README's one sentence, from the largest size where the PromQL join and streammon both answered."""
    both = [n for n in results.sizes if results.get(n, "promql_join", "query_s:accuracy:cumulative")
            and results.get(n, "streammon", "query_s:accuracy:cumulative")]
    if not both:
        return "No size where both the PromQL join and streammon answered."
    n = max(both)
    join = results.get(n, "promql_join", "query_s:accuracy:cumulative")
    ours = results.get(n, "streammon", "query_s:accuracy:cumulative")
    pg = results.get(n, "postgresql", "query_s:join:cumulative")
    text = (f"At {n:,} predictions with feedback, reading accuracy through Prometheus took {seconds(ours)} "
            f"with streammon against {seconds(join)} for the PromQL join of per-prediction gauges "
            f"({join / ours:,.0f}x)")
    if pg:
        text += f" and {seconds(pg)} for a PostgreSQL join ({pg / ours:,.0f}x)"
    reads = {m: results.get(m, "streammon", "query_s:accuracy:cumulative") for m in results.sizes}
    reads = {m: v for m, v in reads.items() if v is not None}
    text += f". streammon's read took at most {seconds(max(reads.values()))} at every N up to {max(reads):,}"
    ours = [a for a in results.answers if a["system"] == "streammon"]
    if ours and all(a["status"] == "exact" for a in ours):
        text += ", and each of its answers equalled scikit-learn's"
    return text + "."


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _up(v: float) -> str:
    return "scrape ok" if v else "fails"


# Tables by size: (column header, system, measure, format).
READ = [("PromQL join: accuracy", "promql_join", "query_s:accuracy:cumulative", seconds),
        ("precision", "promql_join", "query_s:precision:cumulative", seconds),
        ("recall", "promql_join", "query_s:recall:cumulative", seconds),
        ("accuracy 1h", "promql_join", "query_s:accuracy:1h", seconds),
        ("PostgreSQL join (all 3)", "postgresql", "query_s:join:cumulative", seconds),
        ("join 1h", "postgresql", "query_s:join:1h", seconds),
        ("view (all 3)", "postgresql", "query_s:view:cumulative", seconds),
        ("view 1h", "postgresql", "query_s:view:1h", seconds),
        ("streammon: accuracy", "streammon", "query_s:accuracy:cumulative", seconds),
        ("accuracy 1h", "streammon", "query_s:accuracy:1h", seconds)]
FRESH_TABLE = [("gauges: set per event", "promql_join", "ingest_us_per_event", micro),
               ("Prometheus scrape", "promql_join", "scrape_s", seconds),
               ("samples", "promql_join", "scrape_samples", count),
               ("essay's 5 s interval", "promql_join", "essay_interval_scrape_up", _up),
               ("PostgreSQL: COPY per event", "postgresql", "ingest_us_per_event", micro),
               ("REFRESH, last batch", "postgresql", "refresh_last_s", seconds),
               ("REFRESH, all batches", "postgresql", "refresh_total_s", seconds),
               ("streammon: per event", "streammon", "ingest_us_per_event", micro),
               ("scrape (Prometheus)", "streammon", "scrape_s", seconds),
               ("/metrics in-process", "streammon", "inprocess_scrape_s", seconds)]
BATCH_TABLE = [("PromQL join: sets + one scrape", "promql_join", "fresh_batch_s", seconds),
               ("PostgreSQL: COPY + REFRESH", "postgresql", "fresh_batch_s", seconds),
               ("streammon: process + one scrape", "streammon", "fresh_batch_s", seconds)]
MEMORY_TABLE = [("gauge app state", "promql_join", "app_state_bytes", size),
                ("its Prometheus (peak RSS)", "promql_join", "prometheus_peak_rss_bytes", size),
                ("PostgreSQL tables + indexes", "postgresql", "table_bytes", size),
                ("materialized view", "postgresql", "view_bytes", size),
                ("streammon state", "streammon", "app_state_bytes", size),
                ("its Prometheus (peak RSS)", "streammon", "prometheus_peak_rss_bytes", size)]
APPROACHES = {"streammon": "streammon `accuracy{window=\"1h\"}`",
              "last_pair_gauge": "gauge set per labelled prediction",
              "batch_gauge": "gauge set per feedback batch (1 s)"}


def _by_size(results: Results, columns: list[tuple]) -> str:
    rows = [[f"{n:,}"] + [results.cell(n, system, measure, fmt) for _, system, measure, fmt in columns]
            for n in results.sizes]
    return _table(["N"] + [c[0] for c in columns], [r for r in rows if any(r[1:])])


def _interval_table(interval_rows: list[dict]) -> str:
    return _table(
        ["publishing", "scrape interval", "updates", "reached Prometheus", "missed", "scrapes checked", "exact",
         "mean error", "max error"],
        [[APPROACHES[x["approach"]], f"{x['scrape_interval_s']:g} s", f"{x['updates']:,}", f"{x['updates_scraped']:,}",
          f"{100 * x['missed_share']:.1f} %", f"{x['scrapes_checked']:,}", f"{x['exact_scrapes']:,}",
          f"{x['mean_abs_err_pp']:.2f} pp", f"{x['max_abs_err_pp']:.2f} pp"] for x in interval_rows])


def section(results: Results, interval_rows: list[dict], meta: dict) -> str:
    r = results
    read, fresh = _by_size(r, READ), _by_size(r, FRESH_TABLE)
    batch, memory = _by_size(r, BATCH_TABLE), _by_size(r, MEMORY_TABLE)
    iv = _interval_table(interval_rows)
    checked = len(r.answers)
    wrong = [a for a in r.answers if a["status"] != "exact"]
    verdict = (f"All {checked} answers equal scikit-learn's (accuracy, precision, recall; cumulative and 1 h; "
               "every size and system that ran)." if not wrong else
               f"{len(wrong)} of {checked} answers differ from scikit-learn or failed: " +
               "; ".join(f"{a['system']} {a['read']} {a['metric']} {a['window']} at N={a['n']:,}: {a['status']}"
                         for a in wrong[:10]))
    skipped = "\n".join(f"- {SYSTEM_NAMES[s['system']]} at N={s['n']:,}: {s['reason']}" for s in r.skipped) or "- none"
    failures = [row for row in r.rows if row["status"] not in ("ok", "not run")]
    failed = "\n".join(f"- {SYSTEM_NAMES[f['system']]} at N={f['n']:,}, {f['measure']}: {f['status']} ({f['note']})"
                       for f in failures) or "- none"
    return "\n".join([
        BEGIN,
        "## Side by side: the PromQL join, PostgreSQL and streammon",
        "",
        f"Results of `python bench/compare/run.py` (how it works: `bench/compare/README.md`), run on {meta['date']}, "
        f"{meta['minutes']:.0f} minutes in all. Raw figures: `bench/results/compare.csv` (timings, memory, failures), "
        "`bench/results/compare_answers.csv` (every answer next to scikit-learn's), "
        "`bench/results/compare_interval.csv`.",
        "",
        f"Machine: {meta['machine']}. Load average at start: {meta['load']} (other work shares the cores). "
        f"Versions: {meta['versions']}.",
        "",
        f"**Headline.** {headline(results)}",
        "",
        "![latency against N, log-log](../bench/results/compare.png)",
        "",
        f"The stream: N predictions spread over one day of event time, each with feedback after an exponential delay "
        f"(mean 5 min), 85 % right, 30 % positive; ids of ten capital letters as in the essay. The 1 h window is "
        f"streammon's `Sliding(\"1h\")` at the end of the stream (about N/24 pairs); every system answers for the same "
        f"window. Each query runs {meta['reps']} times (fewer once its runs add up to 10 s, up to 25 times while they "
        "stay under 1 s in all) and the median is shown.",
        "",
        "### Reading the metrics",
        "",
        "The PromQL join: the essay's three queries (`count(abs(label - on (output_id) prediction) < 0.5) / ...`), "
        "through Prometheus's HTTP API, evaluated at one instant after a complete scrape with no scrape running; the "
        "1 h form adds a third gauge per prediction (its event time) and joins on it too. PostgreSQL: one query "
        "returns the counts behind all three metrics, as a join of the two tables on demand or as a read of the "
        "materialized view. streammon: the selector `streammon_accuracy{window=\"cumulative\"}` through the same API.",
        "",
        read,
        "",
        "### Keeping them fresh",
        "",
        "Per event: the gauge app's `Gauge.labels(output_id).set()`, PostgreSQL's `COPY` into indexed tables (one "
        f"transaction per {meta['batch']:,} arrivals), streammon's `Monitor.process` on wire JSON. "
        "Per scrape or batch: "
        "Prometheus's own `scrape_duration_seconds` (fetch, parse and store), the materialized view's `REFRESH` after "
        "every feedback batch. The essay scraped every 5 s; the column says whether a 5 s scrape of the gauges "
        "still completes.",
        "",
        fresh,
        "",
        f"Absorbing one batch of {meta['batch']:,} arrivals at the end of the stream and making the metrics readable "
        "(the batch at the measured cost per event, plus one scrape or one refresh):",
        "",
        batch,
        "",
        "### Memory",
        "",
        "App state = the process's RSS after ingest and the first scrape minus its RSS before ingest; "
        "Prometheus = peak RSS of the Prometheus "
        "that scraped it.",
        "",
        memory,
        "",
        f"**Correctness.** {verdict}",
        "",
        "Sizes not run:",
        "",
        skipped,
        "",
        "Failures (timeouts, limits, wrong answers):",
        "",
        failed,
        "",
        "### Scrape interval: what reaches Prometheus",
        "",
        f"A stream of {meta['interval_spec']} replayed in event time, one tick per second; at each scrape instant the "
        "exposition is read with `generate_latest` and parsed, which is what Prometheus stores. Two common gauge "
        "patterns are compared with the true accuracy of the last hour (PromQL `avg_over_time(g[1h])`, the only way "
        "to get an hour out of a gauge), and streammon's `accuracy{window=\"1h\"}` with numpy's accuracy over the "
        "same window at every scrape. Errors are in percentage points of accuracy.",
        "",
        iv,
        "",
        "A gauge holds one value: whatever was set between two scrapes and overwritten is never seen, so the share "
        "missed grows with the ratio of update rate to scrape rate, and the hour's accuracy becomes an average of "
        "samples. The essay's per-prediction gauges lose nothing this way (each id has its own series) but pay for "
        "it with a series per prediction, which is the cost measured above. streammon's published value at each "
        "scrape already counts every pair joined so far, so it is exact at any interval; the interval only decides "
        "how often Prometheus records it.",
        END,
    ])


def update_doc(path: str, text: str) -> None:
    """Put ``text`` between the markers, or append it; the rest of the file is someone else's and stays as it is."""
    try:
        with open(path, encoding="utf-8") as f:  # read right before writing: the file is shared
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    if BEGIN in doc and END in doc and doc.index(BEGIN) < doc.index(END):
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + text + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)

