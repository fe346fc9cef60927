"""One exception type for mistakes a user can fix.

Every message is one line that names the file, line, request or option at fault
and says what to do. The CLI prints it without a stack trace; anything else that
escapes is a bug in vlmkit and keeps its traceback.
"""


class VlmkitError(Exception):
    """A problem with the user's input, files or options (not a bug in vlmkit)."""


class DataError(VlmkitError):
    """A sample, dataset row or request that cannot be encoded as given."""


class PlaceholderError(DataError):
    """A row whose `<image>` / `<video>` placeholders do not match its listed media."""


class MediaError(VlmkitError):
    """An image or video that cannot be read: missing, corrupt, unreachable or too large.

    media: "image", or "video" for an error raised while reading a video (`vlmkit.media.video`), frames included.
    """

    media = "image"


class MediaTooLargeError(MediaError):
    """Media over a size limit (bytes or pixels, e.g. a decompression bomb); `vlmkit serve` answers 413."""


class PrivateUrlError(MediaError):
    """A media URL refused because its host is not at a public address (`MediaPolicy.allow_private_urls`)."""


class EngineDeadError(VlmkitError):
    """The generation engine stopped for good (vLLM's `EngineDeadError`): no later row can be answered, so
    batch inference stops at once instead of writing the same error on every row."""
