"""The browser softphone: ``GET /phone`` and its static page (plain HTML/JS, no build step)."""

from agent_voice_bridge.web.softphone import softphone_enabled, softphone_router

__all__ = ["softphone_enabled", "softphone_router"]
