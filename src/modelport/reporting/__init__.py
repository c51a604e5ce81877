"""What people read: terminal/Markdown/CSV tables, the HTML report, merged multi-machine comparisons."""
