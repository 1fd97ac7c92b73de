#!/usr/bin/env python3
"""A toy training loop for Cairn's Kubernetes examples (standard library only).

Every example (TFJob, PyTorchJob, Volcano Job, Trainer v2 TrainJob) runs this
script from the ConfigMap `cairn-train-script` on a stock `python:3.12-slim`
image. It does what a real training job does to its file system, on a toy
"model", so that the data path through Cairn is exercised end to end:

* reads every file under DATA_DIR (hidden files and directories skipped),
  one file per step, epoch after epoch;
* "trains": the model is a 256-bin byte-frequency vector nudged towards the
  histogram of each file it reads (an SGD step on a squared loss), plus a
  running CRC-32 of every byte seen. numpy counts the bytes when it is
  installed; pure Python otherwise. Both give the same result, bit for bit;
* saves a checkpoint every SAVE_EVERY steps the safe way: write
  `ckpt-<step>.tmp`, fsync it, rename it to `ckpt-<step>.pt`, fsync the
  directory; then keeps the newest KEEP_CHECKPOINTS and deletes the rest;
* on start, resumes from the newest complete checkpoint (each carries a
  CRC-32 of its body; a damaged or half-written one is skipped with a
  warning, and leftover `*.tmp` files are removed);
* on SIGTERM (eviction, preemption) saves a checkpoint after the current
  step and exits 143, so a restarted job loses nothing.

Only one process of a job writes checkpoints (the writer): the one of rank
0, taken from RANK (PyTorchJob), TF_CONFIG (TFJob: the chief), PET_NODE_RANK
(Trainer v2), or forced with CHECKPOINT_WRITER=true/false (Volcano Job).
The others train the same way and resume from the writer's checkpoints.

Settings are flags or environment variables (flags win):

  DATA_DIR            --data-dir          dataset directory (default /data)
  CHECKPOINT_DIR      --checkpoint-dir    checkpoints (default /checkpoints)
  MODEL_DIR           --model-dir         optional pre-trained "model": a
                                          fresh run starts from its files'
                                          byte histogram
  STEPS               --steps             total steps of the run (100)
  SAVE_EVERY          --save-every        checkpoint period in steps (10)
  KEEP_CHECKPOINTS    --keep              complete checkpoints kept (3)
  STEP_SECONDS        --step-seconds      sleep per step, to watch it (0)
  DATA_WAIT_SECONDS   --data-wait         wait this long for DATA_DIR to
                                          hold a file (0: fail at once)
  TRAIN_NO_NUMPY=1    --no-numpy          count bytes in pure Python

Other modes:

  --seed-dataset   write a small generated dataset into DATA_DIR unless it
                   already holds files; built beside it and renamed into
                   place, so readers see all of it or none (the examples'
                   init containers use it)
  --self-test      run twice in a temporary directory and check the second
                   run resumes from the first's checkpoint

Run it locally:

  DATA_DIR=/tmp/x CHECKPOINT_DIR=/tmp/y python3 train.py --seed-dataset
  DATA_DIR=/tmp/x CHECKPOINT_DIR=/tmp/y python3 train.py --steps 20
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib

MAGIC = b"CAIRN-TOY-CKPT 1\n"
CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
TMP_RE = re.compile(r"^ckpt-(\d+)\.tmp$")
LEARNING_RATE = 0.1

try:
    import numpy
except ImportError:  # python:3.12-slim has no numpy: count in pure Python
    numpy = None


def log(msg):
    print(f"[train] {msg}", flush=True)


# ---------------------------------------------------------------- settings


def env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        sys.exit(f"train.py: {name}={value!r} is not an integer")


def env_float(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        sys.exit(f"train.py: {name}={value!r} is not a number")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Toy training loop with safe checkpoints (Cairn examples).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every flag can also be given as the environment variable in the module docstring.",
    )
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or "/data")
    p.add_argument("--checkpoint-dir", default=os.environ.get("CHECKPOINT_DIR") or "/checkpoints")
    p.add_argument("--model-dir", default=os.environ.get("MODEL_DIR") or "")
    p.add_argument("--steps", type=int, default=env_int("STEPS", 100))
    p.add_argument("--save-every", type=int, default=env_int("SAVE_EVERY", 10))
    p.add_argument("--keep", type=int, default=env_int("KEEP_CHECKPOINTS", 3))
    p.add_argument("--step-seconds", type=float, default=env_float("STEP_SECONDS", 0.0))
    p.add_argument("--data-wait", type=float, default=env_float("DATA_WAIT_SECONDS", 0.0))
    p.add_argument("--no-numpy", action="store_true",
                   default=os.environ.get("TRAIN_NO_NUMPY", "") not in ("", "0", "false"))
    p.add_argument("--seed-dataset", action="store_true",
                   help="write a small generated dataset into DATA_DIR if it holds no file")
    p.add_argument("--seed-files", type=int, default=env_int("SEED_FILES", 8))
    p.add_argument("--seed-bytes", type=int, default=env_int("SEED_BYTES", 64 * 1024))
    p.add_argument("--self-test", action="store_true",
                   help="train twice in a temporary directory and check the resume")
    args = p.parse_args(argv)
    if args.steps < 0 or args.save_every < 1 or args.keep < 1:
        p.error("--steps must be >= 0, --save-every and --keep >= 1")
    return args


def is_writer():
    """Whether this process writes checkpoints (rank 0 of its job)."""
    forced = os.environ.get("CHECKPOINT_WRITER", "").strip().lower()
    if forced:
        return forced in ("1", "true", "yes")
    if os.environ.get("RANK", "").strip():  # PyTorchJob, torchrun
        return int(os.environ["RANK"]) == 0
    tf_config = os.environ.get("TF_CONFIG", "").strip()
    if tf_config:  # TFJob: the chief writes; without a chief, worker 0
        cfg = json.loads(tf_config)
        task = cfg.get("task", {})
        kind, index = str(task.get("type", "")).lower(), int(task.get("index", 0))
        cluster = {k.lower() for k in cfg.get("cluster", {})}
        if kind in ("chief", "master"):
            return True
        return kind == "worker" and index == 0 and not cluster & {"chief", "master"}
    if os.environ.get("PET_NODE_RANK", "").strip():  # Kubeflow Trainer v2
        return int(os.environ["PET_NODE_RANK"]) == 0
    return True


# ------------------------------------------------------------ file helpers


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def list_files(root):
    """Every regular file under root, sorted, hidden entries skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                out.append(path)
    return out


def fingerprint(root, files):
    """A short digest of the dataset's names and sizes."""
    h = 0
    for path in files:
        rel = os.path.relpath(path, root)
        h = zlib.crc32(f"{rel}\0{os.path.getsize(path)}\n".encode(), h)
    return f"{len(files)}:{h:08x}"


def byte_histogram(path, use_numpy):
    """(counts[256], bytes, crc32) of one file, read in 1 MiB pieces."""
    counts = [0] * 256
    total, crc = 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            crc = zlib.crc32(chunk, crc)
            if use_numpy:
                c = numpy.bincount(numpy.frombuffer(chunk, dtype=numpy.uint8), minlength=256)
                for i, n in enumerate(c.tolist()):
                    counts[i] += n
            else:
                for i in range(256):
                    n = chunk.count(i)
                    if n:
                        counts[i] += n
    return counts, total, crc


# ------------------------------------------------------------- checkpoints


def encode_checkpoint(state):
    body = json.dumps(state, sort_keys=True).encode()
    return MAGIC + body + b"\n" + f"crc32={zlib.crc32(body):08x}\n".encode()


def decode_checkpoint(blob):
    if not blob.startswith(MAGIC):
        raise ValueError("bad magic")
    rest = blob[len(MAGIC):]
    body, sep, trailer = rest.rpartition(b"\n" + b"crc32=")
    if not sep or not trailer.endswith(b"\n"):
        raise ValueError("truncated")
    if int(trailer[:-1], 16) != zlib.crc32(body):
        raise ValueError("CRC mismatch")
    return json.loads(body)


def checkpoints(ckpt_dir):
    """[(step, path)] of the ckpt-<step>.pt files, newest first."""
    found = []
    for name in os.listdir(ckpt_dir):
        m = CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(found, reverse=True)


def load_latest(ckpt_dir):
    """The newest checkpoint that reads whole, or None."""
    for step, path in checkpoints(ckpt_dir):
        try:
            with open(path, "rb") as f:
                state = decode_checkpoint(f.read())
            if state.get("step") != step:
                raise ValueError(f"holds step {state.get('step')}")
            return state, path
        except (OSError, ValueError) as e:
            log(f"WARNING: skipping damaged checkpoint {path}: {e}")
    return None, None


def save_checkpoint(ckpt_dir, state, keep):
    step = state["step"]
    tmp = os.path.join(ckpt_dir, f"ckpt-{step}.tmp")
    final = os.path.join(ckpt_dir, f"ckpt-{step}.pt")
    write_durably(tmp, encode_checkpoint(state))
    os.replace(tmp, final)  # atomic: readers see the old set or the new one
    fsync_dir(ckpt_dir)  # the rename itself is durable
    pruned = []
    for old_step, path in checkpoints(ckpt_dir)[keep:]:
        try:
            os.remove(path)
            pruned.append(old_step)
        except FileNotFoundError:
            pass
    if pruned:
        fsync_dir(ckpt_dir)
    log(f"checkpoint {final} saved" + (f" (removed steps {sorted(pruned)})" if pruned else ""))


def remove_stale_tmp(ckpt_dir):
    for name in os.listdir(ckpt_dir):
        if TMP_RE.match(name):
            log(f"removing unfinished checkpoint {name} (a writer died mid-save)")
            try:
                os.remove(os.path.join(ckpt_dir, name))
            except FileNotFoundError:
                pass


# ------------------------------------------------------------------ training


def initial_weights(model_dir, use_numpy):
    weights = [1.0 / 256] * 256
    if not model_dir or not os.path.isdir(model_dir):
        return weights, None
    files = list_files(model_dir)
    counts, total = [0] * 256, 0
    for path in files:
        c, n, _ = byte_histogram(path, use_numpy)
        counts = [a + b for a, b in zip(counts, c)]
        total += n
    if total == 0:
        return weights, None
    return [c / total for c in counts], fingerprint(model_dir, files)


def wait_for_data(data_dir, seconds):
    deadline = time.monotonic() + seconds
    announced = False
    while True:
        files = list_files(data_dir) if os.path.isdir(data_dir) else []
        if files:
            return files
        if time.monotonic() >= deadline:
            return []
        if not announced:
            log(f"waiting up to {seconds:.0f}s for the dataset in {data_dir}")
            announced = True
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def train(args):
    use_numpy = numpy is not None and not args.no_numpy
    writer = is_writer()
    host = socket.gethostname()
    log(f"host={host} writer={writer} data={args.data_dir} checkpoints={args.checkpoint_dir} "
        f"steps={args.steps} save_every={args.save_every} keep={args.keep} "
        f"counting={'numpy' if use_numpy else 'python'}")

    files = wait_for_data(args.data_dir, args.data_wait)
    if not files:
        log(f"ERROR: no file under {args.data_dir}: fill the dataset first "
            f"(e.g. `train.py --seed-dataset`, or copy it in), or set DATA_WAIT_SECONDS")
        return 2
    fp = fingerprint(args.data_dir, files)
    log(f"dataset: {len(files)} files, fingerprint {fp}")

    os.makedirs(args.checkpoint_dir, exist_ok=True)
    if writer:
        remove_stale_tmp(args.checkpoint_dir)
    state, path = load_latest(args.checkpoint_dir)
    if state is not None:
        log(f"resumed from {path} at step {state['step']} (loss {state['loss']:.6g})")
        if state.get("dataset") != fp:
            log(f"WARNING: the dataset changed since that checkpoint ({state.get('dataset')} -> {fp})")
    else:
        weights, model_fp = initial_weights(args.model_dir, use_numpy)
        state = {"step": 0, "weights": weights, "loss": 0.0, "crc32": 0,
                 "bytes_seen": 0, "dataset": fp, "model": model_fp}
        log("no checkpoint: starting from step 0" +
            (f" with the model in {args.model_dir} ({model_fp})" if model_fp else ""))
    state["dataset"] = fp

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(signal.SIGTERM))

    last_saved = state["step"]
    while state["step"] < args.steps and not stop:
        step = state["step"] + 1
        path = files[(step - 1) % len(files)]
        counts, nbytes, crc = byte_histogram(path, use_numpy)
        hist = [c / nbytes for c in counts] if nbytes else [1.0 / 256] * 256
        w = state["weights"]
        loss = math.fsum((a - b) * (a - b) for a, b in zip(w, hist))
        state["weights"] = [a + LEARNING_RATE * (b - a) for a, b in zip(w, hist)]
        state["loss"] = loss
        state["crc32"] = zlib.crc32(crc.to_bytes(4, "big"), state["crc32"])
        state["bytes_seen"] += nbytes
        state["step"] = step
        log(f"step {step}/{args.steps} epoch {(step - 1) // len(files) + 1} "
            f"file {os.path.relpath(path, args.data_dir)} bytes {nbytes} loss {loss:.6g}")
        if writer and step % args.save_every == 0:
            save_checkpoint(args.checkpoint_dir, state, args.keep)
            last_saved = step
        if args.step_seconds > 0 and not stop:
            time.sleep(args.step_seconds)

    if writer and state["step"] != last_saved:
        save_checkpoint(args.checkpoint_dir, state, args.keep)
    if stop:
        log(f"SIGTERM: stopped at step {state['step']}" + (" after saving" if writer else ""))
        return 128 + signal.SIGTERM
    log(f"done: step {state['step']} loss {state['loss']:.6g} crc32 {state['crc32']:08x} "
        f"bytes_seen {state['bytes_seen']}")
    return 0


# ------------------------------------------------------------------ dataset


def seed_dataset(args):
    """Generate a small dataset into DATA_DIR unless it already holds files.

    Built in a sibling directory and renamed into place, so a reader waiting
    on DATA_DIR sees the whole dataset or nothing."""
    target = os.path.abspath(args.data_dir)
    if os.path.isdir(target) and list_files(target):
        log(f"dataset present in {target}: leaving it as it is")
        return 0
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".seeding-", dir=parent)
    for i in range(args.seed_files):
        rng = random.Random(i)
        # Each "image" file has its own skewed byte distribution, so the
        # toy model has something to learn and the loss moves.
        scale = 8.0 + 24.0 * i
        data = bytes(min(255, int(rng.expovariate(1.0 / scale))) for _ in range(args.seed_bytes))
        write_durably(os.path.join(tmp, f"shard-{i:05d}.bin"), data)
    fsync_dir(tmp)
    try:
        if os.path.isdir(target) and not os.listdir(target):
            os.rmdir(target)  # an empty directory made by someone else
        os.rename(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(target) and list_files(target):
            log(f"dataset appeared in {target} meanwhile (another seeder): keeping it")
            return 0
        log(f"ERROR: could not publish the dataset at {target}: {e}")
        return 1
    fsync_dir(parent)
    log(f"seeded {args.seed_files} files of {args.seed_bytes} bytes into {target}")
    return 0


# ----------------------------------------------------------------- self-test


def self_test():
    """Train 10 steps, then 20 in a new run that must resume at 10, and
    compare with 20 steps in one run."""
    me = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="cairn-train-selftest-") as tmp:
        data = os.path.join(tmp, "data")
        env = dict(os.environ, DATA_DIR=data, CHECKPOINT_DIR=os.path.join(tmp, "ckpt"),
                   STEP_SECONDS="0", DATA_WAIT_SECONDS="0", CHECKPOINT_WRITER="true")
        for k in ("MODEL_DIR", "RANK", "TF_CONFIG", "PET_NODE_RANK"):
            env.pop(k, None)

        def run(*extra, **overrides):
            import subprocess
            e = dict(env, **overrides)
            r = subprocess.run([sys.executable, me, *extra], env=e, capture_output=True, text=True)
            if r.returncode != 0:
                raise AssertionError(f"train.py {' '.join(extra)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
            return r.stdout

        run("--seed-dataset", "--seed-files", "4", "--seed-bytes", "4096")
        run("--steps", "10", "--save-every", "4", "--keep", "2")
        ckpt = os.path.join(tmp, "ckpt")
        first = sorted(os.listdir(ckpt))
        assert first == ["ckpt-10.pt", "ckpt-8.pt"], first
        out = run("--steps", "20", "--save-every", "4", "--keep", "2")
        assert "resumed from" in out and "at step 10" in out, out
        resumed, _ = load_latest(ckpt)
        straight_dir = os.path.join(tmp, "straight")
        run("--steps", "20", CHECKPOINT_DIR=straight_dir)
        straight, _ = load_latest(straight_dir)
        assert resumed["step"] == straight["step"] == 20
        assert resumed["weights"] == straight["weights"], "resumed run diverged"
        assert resumed["crc32"] == straight["crc32"]
    print("self-test: PASS (resumed at step 10, 20 steps match one uninterrupted run)")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        return self_test()
    if args.seed_dataset:
        return seed_dataset(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
