"""The web UI (issue 15): server-rendered pages under /ui over the API's own services."""
