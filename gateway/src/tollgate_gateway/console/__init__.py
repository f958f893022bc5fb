"""The web console: static files from the Next.js export, served under /console."""
