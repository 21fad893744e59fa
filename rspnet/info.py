"""``python -m rspnet.info``: versions, what was built, and which backend each op uses."""
from __future__ import annotations

import argparse
import json
import platform

import torch

from rspnet import cli

OPS = ("mixed_sum", "path_fusion", "channel_merge")


def collect() -> dict:
    from .ops import _backend

    st = _backend.status()
    ext = st["extension"]
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "extension": {
            "loaded": ext["loaded"],
            "problem": ext["problem"],
            "cpu_kernels": sorted(op for op, key in _backend._KERNELS if key == "CPU"),
            "cuda_kernels": sorted(op for op, key in _backend._KERNELS if key == "CUDA"),
            "cuda_arch_list": ext["info"].get("cuda_arch_list"),
            "built_for_torch": ext["info"].get("torch_version"),
            "built_at": ext["info"].get("built_at"),
        },
        "triton_runs": None,
        "backend_override": st["override"],
        "backend_tuning": st["tuning"],
        "backend_choices": st["choices"],
        "triton_failed": st["triton_failed"],
        "ops": {},
    }
    if st["triton_ok"]:
        import triton
        info["triton"] = triton.__version__
        if torch.cuda.is_available():
            info["triton_runs"] = "on the GPU"
        elif st["triton_interpreter"]:
            info["triton_runs"] = "in the interpreter (TRITON_INTERPRET=1), on CPU tensors"
        else:
            info["triton_runs"] = "no: no GPU (set TRITON_INTERPRET=1 to interpret on CPU)"
    else:
        info["triton_runs"] = f"no: {st['triton_problem']}"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in OPS:
        info["ops"][op] = {}
        for dev in devices:
            x = torch.empty(0, device=dev)
            runnable = [b for b in _backend.BACKENDS if _backend.can_run(b, op, x.device, torch.float32)[0]]
            default = _backend.select(op, x, None)
            if dev == "cuda" and {"cuda", "triton"} <= set(runnable) and st["tuning"] == "measure":
                default = "faster of cuda/triton (fwd+bwd), timed once per call signature"
            info["ops"][op][dev] = {"default": default, "available": runnable}
    return info


def _arch_names(arch_list: str | None) -> str:
    """"9.0+PTX;8.0" -> "sm_90 (+PTX), sm_80"."""
    names = []
    for a in (arch_list or "").replace(" ", ";").split(";"):
        if a:
            ptx = a.endswith("+PTX")
            names.append("sm_" + a.removesuffix("+PTX").replace(".", "") + (" (+PTX)" if ptx else ""))
    return ", ".join(names) or "unknown arch"


def render(info: dict) -> str:
    ext = info["extension"]
    lines = [
        f"rspnet     python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda']}), "
        f"triton {info['triton']}",
        f"GPU        {info['cuda_device'] or 'none'}",
        f"extension  {'loaded' if ext['loaded'] else 'NOT LOADED: ' + str(ext['problem'])}"
        + (f" (built {ext['built_at']} for torch {ext['built_for_torch']})" if ext["loaded"] else ""),
        f"  CPU      {', '.join(ext['cpu_kernels']) or '-'}",
        f"  CUDA     {', '.join(ext['cuda_kernels']) or '-'}"
        + (f"  [{_arch_names(ext['cuda_arch_list'])}]" if ext["cuda_kernels"] else ""),
        f"Triton     {info['triton_runs']}",
        f"override   RSPNET_BACKEND={info['backend_override'] or '(unset)'}",
        f"tuning     {info['backend_tuning']} (RSPNET_TUNE=off: always CUDA where both run, the same kernels "
        "in eager, compiled and every rank)",
        "backends   (default <- available)",
    ]
    for op, per_dev in info["ops"].items():
        for dev, d in per_dev.items():
            lines.append(f"  {op:14s} {dev:5s} {d['default']:10s} <- {', '.join(d['available'])}")
    if info["backend_choices"]:
        lines.append("choices    made in this process (op device dtype signature -> backend)")
        lines += [f"  {k} -> {v}" for k, v in info["backend_choices"].items()]
    for op, why in info["triton_failed"].items():
        lines.append(f"Triton failed for {op}: {why} (falls back)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = cli.ArgumentParser(prog="python -m rspnet.info", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = ap.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=1) if args.json else render(info))


if __name__ == "__main__":
    main()
