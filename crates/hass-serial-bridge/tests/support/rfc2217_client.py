"""Drives pyserial's rfc2217:// client, one command a line on stdin, one
answer a line on stdout ("ok ..." or "error ..."), so a test can check the
tty between steps.

  open URL BAUD        serial_for_url(URL, baudrate=BAUD)
  set NAME VALUE       port.NAME = VALUE (int, True/False, or text)
  get NAME             prints port.NAME
  write HEX            writes the bytes
  read N               reads N bytes (5 s timeout), prints them as hex
  purge                reset_input_buffer() and reset_output_buffer()
  sleep SECONDS        for pin sequences with a hold time
  close
"""
import sys
import time

import serial

port = None


def value(text):
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return text


def reply(*words):
    print(*words, flush=True)


for line in sys.stdin:
    command, *args = line.split()
    try:
        if command == "open":
            port = serial.serial_for_url(args[0], baudrate=int(args[1]), timeout=5)
            reply("ok")
        elif command == "set":
            setattr(port, args[0], value(args[1]))
            reply("ok")
        elif command == "get":
            reply("ok", getattr(port, args[0]))
        elif command == "write":
            port.write(bytes.fromhex(args[0]))
            reply("ok")
        elif command == "read":
            reply("ok", port.read(int(args[0])).hex())
        elif command == "purge":
            port.reset_input_buffer()
            port.reset_output_buffer()
            reply("ok")
        elif command == "sleep":
            time.sleep(float(args[0]))
            reply("ok")
        elif command == "close":
            port.close()
            reply("ok")
        else:
            reply("error", "unknown command", command)
    except Exception as e:  # the test reads the failure as an answer
        reply("error", type(e).__name__, " ".join(str(e).split()))
