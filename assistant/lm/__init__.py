"""The language-model toolkit (decode machinery lives here; the rest moves in with the restructure)."""
