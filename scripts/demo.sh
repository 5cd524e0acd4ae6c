#!/usr/bin/env bash
# The main job on a fresh machine: install, train a small chatbot on the chitchat corpus, talk to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
. .venv/bin/activate
shoshin train demo "$@"
for prompt in "Hi! How are you doing today?" "What do you like to do for fun?"; do
  echo "you: $prompt"
  reply=$(shoshin sample latest --prompt "$prompt" --max-new-tokens 60 --temperature 0.7 --top-k 40 --seed 0)
  # A reply of several lines stays under "bot:", indented like its first line.
  printf '%s\n' "$reply" | sed '1s/^/bot: /; 2,$s/^/     /'
done
echo
echo "next: talk to it yourself (/quit ends the chat):"
echo "  . .venv/bin/activate && shoshin chat latest"
