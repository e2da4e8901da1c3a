"""Train SqueezeTime on the camera-motion task (squeezetime.motion_task) and write a checkpoint that
`squeeze export squeezetime --checkpoint` loads strictly.

    python -m squeezetime.train_motion --out DIR [--minutes 6 | --steps N] [--batch 128] [--width 0.5] [--seed 0]

Training clips are rendered on the training device from the training photographs (a fresh, seeded stream:
balanced classes, random photograph, mirrored half of the time); nothing is evaluated on the held-out
photographs until training has finished, and the model is not selected on them. Then the checkpoint is
written (fp16 safetensors; architecture and labels in its metadata, everything else in a JSON beside it),
read back with ``squeezetime.load_checkpoint`` (strict) and evaluated in fp32 on the held-out clips rendered on
the CPU through the official preprocessing (``motion_task.heldout_clips``): top-1 overall and per class and the
confusion matrix go into the JSON.

Reproducible: every random stream is seeded (``--seed``); ``--minutes`` sets the step count from the measured
speed of the first steps, and the JSON records the count, so ``--steps N`` repeats a run (up to the GPU's
non-deterministic kernels). On a CUDA device the forward/backward runs in bf16 autocast (weights in fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from . import motion_task
from .config import get_config
from .errors import SqueezeError
from .model import SqueezeTime

CALIBRATION_STEPS = (10, 30)  # steps timed to turn --minutes into a step count (after cuDNN's warm-up)


def checkpoint_stem(width: float) -> str:
    return f"camera_motion_w{round(width * 100):03d}"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_motion_checkpoint(model: SqueezeTime, path: Path, extra: Dict) -> None:
    """fp16 safetensors (integer tensors kept), with the architecture and labels as metadata; written atomically."""
    from safetensors.torch import save_file

    from squeeze_mobile.atomic import atomic_path

    cfg = model.config
    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    meta = {
        "config": cfg.name, "task": "camera_motion", "label_file": motion_task.LABEL_FILE,
        "labels": json.dumps(list(motion_task.LABELS)), "num_classes": str(cfg.num_classes), "width": repr(cfg.width),
        "frames": str(cfg.frames), "frame_interval": str(cfg.frame_interval), "input_size": str(cfg.input_size),
        "dtype": "float16", "training": json.dumps(extra, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


@torch.no_grad()
def evaluate(model: SqueezeTime, clips: motion_task.MotionClips, device, batch: int = 16) -> Dict:
    """fp32 top-1 of ``model`` on ``clips``: overall, per class, confusion matrix (rows: true class)."""
    model.eval().to(device)
    preds = []
    for start in range(0, len(clips), batch):
        x = clips.normalized(start, start + batch).to(device)
        preds.append(model(x).float().argmax(1).cpu())
    pred = torch.cat(preds).numpy()
    return accuracy_report(pred, clips.labels)


def accuracy_report(pred: np.ndarray, labels: np.ndarray) -> Dict:
    k = motion_task.NUM_CLASSES
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    per_class = {motion_task.LABELS[c]: float(conf[c, c] / max(1, conf[c].sum())) for c in range(k)}
    return {"clips": int(len(labels)), "top1": float((pred == labels).mean()), "per_class_top1": per_class,
            "confusion": conf.tolist(), "confusion_rows": "true class (LABELS order), columns: predicted"}


def train(args) -> Dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config("k400", width=args.width, num_classes=motion_task.NUM_CLASSES, frames=args.frames)
    size = args.size or cfg.input_size
    data = motion_task.TrainingClips(cfg, seed=args.seed, device=device, photos_dir=args.photos, size=size)
    model = SqueezeTime(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("pos_embed") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))
    total = args.steps or args.max_steps
    warmup = min(args.warmup, max(1, total // 10))
    stem = checkpoint_stem(args.width)
    log = open(out / "train_log.jsonl", "w", encoding="utf-8")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    t_start = time.perf_counter()
    t_cal = None
    ema_loss, ema_acc = None, None
    model.train()
    step = 0
    while step < total:
        if step == CALIBRATION_STEPS[0]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_cal = time.perf_counter()
        if step == CALIBRATION_STEPS[1] and args.steps is None and t_cal is not None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.perf_counter() - t_cal) / (CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0])
            left = args.minutes * 60 - (time.perf_counter() - t_start)
            total = max(step + 1, min(args.max_steps, step + int(left / per_step)))
            warmup = min(args.warmup, max(1, total // 10))
            print(f"calibrated: {per_step * 1000:.0f} ms/step -> {total} steps", flush=True)
        lr = lr_at(step, total, args.lr, warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = data.batch(args.batch)
        with amp:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == total:
            acc = float((logits.argmax(1) == y).float().mean())
            lv = float(loss)
            ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
            ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
            rec = {"step": step, "total": total, "loss": lv, "batch_top1": acc, "ema_loss": ema_loss, "ema_top1": ema_acc,
                   "lr": lr, "elapsed_s": round(time.perf_counter() - t_start, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if args.save_every and step % args.save_every == 0 and step < total:
            save_motion_checkpoint(model, out / f"{stem}.safetensors", {"partial": True, "steps_done": step})
    train_s = time.perf_counter() - t_start
    log.close()
    return {"model": model, "cfg": cfg, "steps": total, "train_seconds": round(train_s, 1), "device": device,
            "warmup": warmup, "size": size, "final_ema_loss": ema_loss, "final_ema_train_top1": ema_acc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m squeezetime.train_motion", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder: checkpoint (.safetensors + .json), train_log.jsonl")
    p.add_argument("--photos", default=None, help="photo bundle folder (default: $SQUEEZE_MOTION_PHOTOS, else the installed packages)")
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget; sets the step count after calibration")
    p.add_argument("--steps", type=int, default=None, help="exact number of steps (overrides --minutes)")
    p.add_argument("--max-steps", type=int, default=20000, help="upper bound on the step count from --minutes")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--width", type=float, default=0.5, help="width factor of the stage widths 64/128/256/512")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=None, help="training clip size (default: the config's input size, 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--eval-clips-per-photo", type=int, default=4, help="held-out clips per (photograph, class)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1000, help="write the checkpoint every N steps too (0: only at the end)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (held-out rendering)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = train(args)
        out = Path(args.out)
        stem = checkpoint_stem(args.width)
        ckpt = out / f"{stem}.safetensors"
        training = {
            "command": "python -m squeezetime.train_motion " + " ".join(argv if argv is not None else sys.argv[1:]),
            "steps": run["steps"], "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
            "warmup": run["warmup"], "label_smoothing": args.label_smoothing, "seed": args.seed, "clip_size": run["size"],
            "optimizer": "AdamW, cosine schedule, grad-norm clip 5",
            "precision": "bf16 autocast, fp32 weights" if run["device"].type == "cuda" else "fp32",
            "train_seconds": run["train_seconds"],
            "device": torch.cuda.get_device_name(0) if run["device"].type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "train_photos": motion_task.train_photo_ids(), "heldout_photos": motion_task.heldout_photo_ids(),
        }
        save_motion_checkpoint(run["model"], ckpt, training)
        # the shipped model is what the file holds (fp16 weights, read into fp32): evaluate exactly that
        from .checkpoint import load_checkpoint

        shipped = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        clips = motion_task.heldout_clips(args.eval_clips_per_photo, frames=args.frames, size=run["size"],
                                          config=shipped.config, photos_dir=args.photos)
        render_s = time.perf_counter() - t0
        heldout = evaluate(shipped, clips, run["device"])
        record = {
            "checkpoint": ckpt.name, "bytes": ckpt.stat().st_size, "task": "camera_motion",
            "labels": list(motion_task.LABELS), "config": shipped.config.to_dict(), "training": training,
            "final_ema_train_loss": run["final_ema_loss"], "final_ema_train_top1": run["final_ema_train_top1"],
            "heldout": {**heldout, "clips_per_photo": args.eval_clips_per_photo, "render_seconds": round(render_s, 1),
                        "evaluated": "fp32, the checkpoint as saved (fp16 weights), official preprocessing on the CPU"},
            "photos": {"train": motion_task.photo_provenance(motion_task.train_photo_ids(), args.photos),
                       "heldout": motion_task.photo_provenance(motion_task.heldout_photo_ids(), args.photos)},
        }
        from squeeze_mobile.atomic import atomic_path

        with atomic_path(out / f"{stem}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(json.dumps({"heldout_top1": heldout["top1"], "per_class": heldout["per_class_top1"],
                          "steps": run["steps"], "train_seconds": run["train_seconds"]}), flush=True)
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
