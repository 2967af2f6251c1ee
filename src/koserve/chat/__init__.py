"""Chat templates: messages → the prompt string each profile's model was trained on.

Client-side and dependency-light (jinja2 only, no transformers).
"""

from koserve.chat.template import (
    USE_DEFAULT,
    Message,
    PromptInjectionError,
    control_string_pattern,
    render_prompt,
)

__all__ = ["USE_DEFAULT", "Message", "PromptInjectionError", "control_string_pattern", "render_prompt"]
