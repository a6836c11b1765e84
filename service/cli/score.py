"""`rewardloop rewards score`: the reward of any text, offline -- no Redis, no server.

Reads JSON lines (worker/rewards/offline.py says what a line holds), scores each reply into the
reply record's `quality` mapping (core/reply_scoring.py: the safety scorer, and relevance and
fluency under the base model, loaded once and batched), then runs the reward worker's own
function under the reward config the workers would use. A bad line is reported on stderr with
its number and what to fix, the good lines are still scored, and the exit status is 1 at the end.
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO

from core.settings import CommonSettings

DESCRIPTION = """\
Score replies offline with the reward the workers compute: each reply's P[unsafe], relevance and
fluency (the scores the reward reads from a reply record: core/reply_scoring.py), then every
component that fires for the user signals you give, and the total -- under
REWARDLOOP_REWARD_CONFIG or --config, so a weight change can be tried before it is deployed.
Needs no Redis and no server.

Input: one JSON object per line, from FILE or stdin:
  {"prompt": "...", "reply": "...", "signals": {"thumbs": 1, "copy": true}}
  signals (optional) are named like the reward's components: thumbs 1/-1/0, rating 1..5,
  choose true/false, copy, regenerate, edited, abandon true, continuation true or seconds,
  dwell visible ms, sibling true/false, safety true (the user reported it unsafe),
  tag_<reason> true. Optional too: "finish_reason" (stop|length|cancelled|error) and "id".

Output: per line its unsafe, relevance and fluency, each component with why, and the total;
with --json one object per line: line, reward, unsafe (P 0..1), relevance and fluency (z-scores
against the model's own replies, higher is better; null without a model or for an empty
reply), components, and the raw scores. A bad line is reported on stderr ("line 7: ...") and
skipped; the other lines are scored and the exit status is 1. Setup errors exit 2.

example:
  echo '{"prompt": "What is the capital of France?", "reply": "Paris.", "signals": {"thumbs": 1}}' \\
    | rewardloop rewards score --json
  rewardloop rewards score replies.jsonl --config try.toml     # try.toml: relevance_weight = 0.4
"""


def register(rsub, fmt) -> None:
    s = rsub.add_parser("score", help="score replies from JSON lines offline (no Redis, no server)",
                        formatter_class=fmt, description=DESCRIPTION)
    s.add_argument("file", metavar="FILE", nargs="?", default="-", help="JSON lines to score (default: stdin)")
    s.add_argument("--json", action="store_true", help="print one JSON object per line")
    s.add_argument("--config", type=Path, metavar="TOML",
                   help="reward config to score with (default REWARDLOOP_REWARD_CONFIG, else the packaged one)")
    s.add_argument("--model", help="base model for relevance and fluency: smollm2 (default), tiny-random or a "
                   "folder (REWARDLOOP_MODEL)")
    s.add_argument("--no-model", action="store_true",
                   help="load no model: safety and user signals only (relevance and fluency are null)")
    s.add_argument("--safety-model", metavar="SPEC",
                   help="a local guard or classifier folder (REWARDLOOP_SAFETY_MODEL; default alt-profanity-check)")
    s.add_argument("--batch", type=int, default=64, help="lines scored per batch (default 64)")
    s.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr: auto shows it on a terminal for more than one batch")


def _lines(path: str) -> tuple[BinaryIO, int | None]:
    """The input (bytes: each line is decoded on its own, so one bad byte names its line) and its
    number of lines when it is a file (for the progress bar)."""
    if path == "-":
        return sys.stdin.buffer, None
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
    return open(path, "rb"), total


def _parse(raw: bytes, n: int):
    from worker.rewards.offline import LineError, parse_line
    try:
        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(n, f"is not UTF-8 text (a bad byte at column {exc.start + 1}): save the input as UTF-8") from None
    return parse_line(text, n)


def _batches(stream: BinaryIO, size: int, bad: list[int]) -> Iterator[list]:
    """Parsed good lines in batches; a bad line is reported at once and counted in `bad`."""
    from worker.rewards.offline import LineError
    numbered = enumerate(stream, start=1)
    while True:
        chunk = list(itertools.islice(numbered, size))
        if not chunk:
            return
        good = []
        for n, raw in chunk:
            try:
                parsed = _parse(raw, n)
            except LineError as exc:
                print(f"rewardloop rewards score: {exc}", file=sys.stderr)
                bad.append(n)
                continue
            if parsed is not None:
                good.append(parsed)
        yield good, len(chunk)


def _print_text(row: dict, explain: list[str], out: TextIO) -> None:
    def fmt(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)
    ident = f"  id {row['id']}" if "id" in row else ""
    out.write(f"line {row['line']}{ident}   reward {row['reward']:+.3f}   unsafe {fmt(row['unsafe'], '.3f')}   "
              f"relevance {fmt(row['relevance'], '+.2f')}   fluency {fmt(row['fluency'], '+.2f')}\n")
    out.writelines(f"  {line}\n" for line in explain)
    out.write("\n")


def _setup(args, settings: CommonSettings):
    """(reward config, scorer, config path) or an error message."""
    from core.modeling import ModelNotFound
    from core.reply_scoring import ReplyScorer
    from core.safety import SafetyScorerError
    from worker.rewards.config import RewardConfigError, load_reward_config
    path = args.config or settings.reward_config
    try:
        cfg = load_reward_config(path)
    except (OSError, RewardConfigError) as exc:
        return f"reward config {path}: {exc}"
    try:
        scorer = ReplyScorer.load(model=None if args.no_model else settings.model, models_dir=settings.models_dir,
                                  device=settings.device, safety_model=args.safety_model or settings.safety_model)
    except (ModelNotFound, SafetyScorerError, OSError) as exc:
        return f"{exc}"
    return cfg, scorer, path


def cmd_score(args, settings: CommonSettings) -> int:
    from worker.rewards.config import config_hash
    if args.batch < 1:
        print(f"rewardloop rewards score: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    try:
        stream, total = _lines(args.file)
    except OSError as exc:
        print(f"rewardloop rewards score: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    setup = _setup(args, settings)
    if isinstance(setup, str):
        stream.close()
        print(f"rewardloop rewards score: {setup}", file=sys.stderr)
        return 2
    cfg, scorer, cfg_path = setup
    digest = config_hash(cfg)
    print(f"rewardloop rewards score: model {scorer.model_id or '(none: --no-model)'}, safety {scorer.safety.name}, "
          f"reward config {cfg_path or 'packaged default'} ({digest})", file=sys.stderr)
    from tqdm import tqdm
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty()
                                     and (total is None or total > args.batch))
    bar = tqdm(total=total, unit="line", file=sys.stderr, disable=not show, leave=False)
    bad: list[int] = []
    try:
        with stream, bar:
            scored = _score_all(stream, bar, bad, args=args, cfg=cfg, scorer=scorer, digest=digest)
    except KeyboardInterrupt:
        print("rewardloop rewards score: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader went away (`| head`): not an error of ours
        sys.stderr.close()
        return 0
    return _summary(scored, bad, scorer, time.perf_counter() - t0)


def _score_all(stream, bar, bad: list[int], *, args, cfg, scorer, digest: str) -> int:
    """Score and print every good line, batch by batch; the number scored."""
    from worker.rewards.offline import result_row, reward_of
    scored = 0
    for good, n_read in _batches(stream, args.batch, bad):
        qualities = scorer.score([(x.prompt, x.reply) for x in good])
        now = time.time()
        for line, quality in zip(good, qualities):
            reward = reward_of(line, quality, cfg, now)
            row = result_row(line, quality, reward)
            if args.json:
                row["config_hash"] = digest
                sys.stdout.write(json.dumps(row) + "\n")
            else:
                _print_text(row, reward.explain(), sys.stdout)
        sys.stdout.flush()
        scored += len(good)
        bar.update(n_read)
    return scored


def _summary(scored: int, bad: list[int], scorer, seconds: float) -> int:
    cost = scorer.cost.per_reply_ms()
    load = ", ".join(f"{k} {v:.1f} s" for k, v in scorer.cost.load_s.items())
    model = f"base model {cost['base_model_ms']:.1f} ms, " if scorer.lm is not None else ""
    print(f"rewardloop rewards score: {scored} line(s) scored in {seconds:.1f} s ({load}; per reply: {model}"
          f"safety {cost['safety_ms']:.2f} ms)", file=sys.stderr)
    if not bad:
        return 0
    shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
    print(f"rewardloop rewards score: {len(bad)} line(s) not scored (line {shown}): fix them as said above and "
          "score them again", file=sys.stderr)
    return 1
