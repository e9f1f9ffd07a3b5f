"""`voltron models` (the registry with parameter counts and input contracts) and `voltron convert-upstream`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list the registered models, their sizes and input contracts")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=run_models)

    convert = subparsers.add_parser(
        "convert-upstream", help="import an upstream Voltron release checkpoint (<id>.pt + <id>-config.json)"
    )
    convert.add_argument("checkpoint", help="upstream <id>.pt file")
    convert.add_argument("config", help="upstream <id>-config.json file")
    convert.add_argument("out_dir", help="directory to write config.json + model.safetensors")
    convert.add_argument("--family", help="upstream model id (default: the checkpoint's file stem)")
    convert.add_argument("--language-model", help="local path of the language model named in the config")
    convert.set_defaults(func=run_convert)


def describe_models() -> list[dict]:
    import torch

    from voltron.models.language import load_language_model
    from voltron.models.registry import FAMILIES, available_models, build_model, default_config, parse_model_id

    rows = []
    for name in available_models():
        family, size = parse_model_id(name)
        load_language_model(default_config(name).language_model)  # real weights load outside the meta context
        with torch.device("meta"):  # shapes only: counting parameters needs no memory or init time
            model = build_model(name)
        rows.append(
            {
                "model": name,
                "family": family,
                "size": size,
                "params_m": round(model.num_parameters() / 1e6, 2),
                "embed_dim": model.embed_dim,
                "input": model.input_contract(),
                "pretraining_data": model.sampling_scheme,
                "description": FAMILIES[family].description,
            }
        )
    return rows


def run_models(args: argparse.Namespace) -> int:
    import json

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<18} {'params':>8} {'dim':>5}  {'pretraining data':<17} input"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['model']:<18} {row['params_m']:>7.2f}M {row['embed_dim']:>5}  {row['pretraining_data']:<17} {row['input']}"
        )
    print("\nparams exclude the frozen language model; ids without a size suffix are the paper's ViT-Small.")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from voltron.models.checkpoints import convert_upstream

    out = convert_upstream(args.checkpoint, args.config, args.out_dir, args.family, args.language_model)
    print(f"wrote {out} (load it with voltron.load({str(out)!r}))")
    return 0
