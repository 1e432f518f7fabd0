"""The officer console: a live map for command and dispatch, served by the daemon.

`web.ConsoleService` serves the page (built from console/ by `npm run build` into
`static/`), its read API and sign-in, and the live stream that `feed.LiveFeed` fans out
from the daemon; `status` decides what a subject's marker says (pure); `store` holds the
console's queries. docs/console.md describes it for operators and officers.
"""
