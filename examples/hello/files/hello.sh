#!/bin/sh
echo "hello from a squashfs root"
