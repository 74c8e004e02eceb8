"""The Tesseract HTTP protocol (tesseract-runtime 1.15): a Tesseract server as a transport."""
