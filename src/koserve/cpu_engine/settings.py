"""Engine settings (from the Triton model's ``parameters``) and the factory that builds the engine."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from koserve.errors import ConfigError
from koserve.cpu_engine.scheduler import Engine

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"parameter {name} must be true or false, got {value!r}")


@dataclass
class EngineSettings:
    """What the stand-in needs to know; every field is also a ``parameters`` key of its config.pbtxt."""

    mode: str = "hf"  # hf | replay
    model_dir: str = ""  # hf: a Hugging Face checkpoint folder
    tokenizer_dir: str = ""  # replay: folder with tokenizer.json (defaults to model_dir)
    replay_text_file: str = ""  # replay: UTF-8 text to emit (empty: the built-in Korean passage)
    replay_delay_ms: float = 0.0
    replay_at_end: str = "stop"  # stop | repeat
    max_batch_size: int = 8  # requests decoded at once
    max_queue_size: int = 256  # requests waiting beyond those
    max_input_len: int = 4096
    max_seq_len: int = 8192  # input + output
    end_ids: tuple[int, ...] = ()  # used when a request gives no end_id
    profile_file: str = ""  # a koserve profile; its generation.end_ids fill end_ids when those are not given
    exclude_input_in_output: bool = True  # default when a request does not say
    dtype: str = "float32"
    num_threads: int = 0  # torch intra-op threads (0: torch's default)
    cancel_check_period_ms: float = 10.0
    # guided decoding, the C++ backend's parameters: "xgrammar" + NVIDIA's tokenizer-info file, or "" (off)
    guided_decoding_backend: str = ""
    xgrammar_tokenizer_info_path: str = ""
    guided_compile_timeout_s: float = 10.0  # a guide that takes longer to compile is refused
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "EngineSettings":
        """Parse string parameters; unknown keys are kept in ``extra`` (Triton configs carry others too)."""
        s = cls()
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        for key, raw in params.items():
            value = str(raw)
            if key not in known:
                s.extra[key] = value
                continue
            current = getattr(s, key)
            try:
                if isinstance(current, bool):
                    setattr(s, key, _bool(key, value))
                elif isinstance(current, int):
                    setattr(s, key, int(value) if value.strip() else current)
                elif isinstance(current, float):
                    setattr(s, key, float(value) if value.strip() else current)
                elif isinstance(current, tuple):
                    setattr(s, key, tuple(int(v) for v in value.replace(",", " ").split()))
                else:
                    setattr(s, key, value.strip())
            except ValueError as exc:
                raise ConfigError(f"parameter {key} has an invalid value {value!r}: {exc}") from exc
        s.check()
        return s

    def check(self) -> None:
        if self.mode not in ("hf", "replay"):
            raise ConfigError(f"parameter mode must be 'hf' or 'replay', got {self.mode!r}")
        if self.mode == "hf" and not self.model_dir:
            raise ConfigError("parameter model_dir is required in hf mode (a Hugging Face checkpoint folder)")
        if self.mode == "replay" and not (self.tokenizer_dir or self.model_dir):
            raise ConfigError("parameter tokenizer_dir (or model_dir) is required in replay mode")
        if self.guided_decoding_backend not in ("", "xgrammar"):
            raise ConfigError(  # as the C++ backend (getGuidedDecodingConfigFromParams)
                f"parameter guided_decoding_backend must be 'xgrammar' or empty, got {self.guided_decoding_backend!r}"
            )
        if self.guided_decoding_backend and not self.xgrammar_tokenizer_info_path:
            raise ConfigError("parameter xgrammar_tokenizer_info_path is required with guided_decoding_backend xgrammar")
        for name in ("max_batch_size", "max_input_len", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.max_input_len >= self.max_seq_len:
            raise ConfigError(
                f"max_input_len ({self.max_input_len}) must be smaller than max_seq_len ({self.max_seq_len})"
            )

    def default_end_ids(self) -> tuple[int, ...]:
        if self.end_ids:
            return self.end_ids
        if self.profile_file:
            from koserve.profiles import load_profile  # noqa: PLC0415

            return tuple(load_profile(self.profile_file).generation.end_ids)
        return ()


def create_engine(settings: EngineSettings) -> Engine:
    """Build the engine the settings ask for (loads the checkpoint in hf mode)."""
    common = dict(
        max_batch_size=settings.max_batch_size,
        max_queue_size=settings.max_queue_size,
        cancel_check_period_ms=settings.cancel_check_period_ms,
    )
    if settings.mode == "replay":
        from koserve.cpu_engine.replay import ReplayEngine, load_replay_tokens  # noqa: PLC0415

        tokens = load_replay_tokens(settings.tokenizer_dir or settings.model_dir, settings.replay_text_file or None)
        return ReplayEngine(tokens, delay_ms=settings.replay_delay_ms, at_end=settings.replay_at_end, **common)
    from koserve.cpu_engine.hf import HFEngine  # noqa: PLC0415

    guided = None
    if settings.guided_decoding_backend:
        guided = (settings.xgrammar_tokenizer_info_path, settings.guided_compile_timeout_s)
    return HFEngine(settings.model_dir, dtype=settings.dtype, num_threads=settings.num_threads or None,
                    guided_decoding=guided, **common)
