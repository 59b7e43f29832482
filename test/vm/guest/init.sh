#!/bin/busybox sh
# The test guest's init: a disk writer that remembers what it wrote.
#
# It writes 4 KiB records to /dev/vda at random slots, each one "FERRY-REC
# slot=S seq=N" and random bytes, with O_DIRECT and a flush (the write is
# acknowledged to the guest only once the disk took it), and keeps its own
# table of the last record acknowledged at each slot (slot -> seq md5) in
# tmpfs, that is in guest memory, which migrates with the VM.
#
# Commands, one per line on the serial console; answers start with "FERRY ":
#   (at start)     FERRY READY slots=N
#   hello          FERRY READY slots=N
#   write N        N records now              -> FERRY WROTE seq=S errors=E
#   start          records until stop, in the background; each one: FERRY W seq slot
#   stop           -> FERRY STOPPED seq=S errors=E
#   verify         re-read every slot in the table -> FERRY BAD slot ... / FERRY VERIFIED ok=N bad=M
#   dump           the table: FERRY REC slot seq md5 ... then FERRY DUMPED n
#   poweroff

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
echo 1 > /proc/sys/kernel/printk
stty -echo 2>/dev/null

i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
if [ ! -b /dev/vda ]; then
  echo "FERRY FATAL no /dev/vda"
  poweroff -f
fi

RECORD=4096
SLOTS=$(($(blockdev --getsize64 /dev/vda) / RECORD))
mkdir -p /tmp/t
echo 0 > /tmp/seq
echo 0 > /tmp/errors
echo "FERRY READY slots=$SLOTS"

# One record: write, flush, then enter it in the table.
write_one() {
  read seq < /tmp/seq
  seq=$((seq + 1))
  echo $seq > /tmp/seq
  slot=$(((RANDOM * 32768 + RANDOM) % SLOTS))
  # A record that comes out short (a pipeline that failed: seen once, empty, right after a
  # migration) would be written as nothing by dd and entered as written: make it again.
  tries=0
  while :; do
    { printf 'FERRY-REC slot=%08d seq=%08d\n' $slot $seq; head -c $RECORD /dev/urandom; } | head -c $RECORD > /tmp/rec
    size=$(wc -c < /tmp/rec)
    [ "$size" -eq $RECORD ] && break
    tries=$((tries + 1))
    if [ $tries -ge 5 ]; then
      # Nothing was written: the slot's entry in the table still holds.
      read errors < /tmp/errors
      echo $((errors + 1)) > /tmp/errors
      echo "FERRY ERR record slot=$slot seq=$seq size=$size"
      return
    fi
  done
  if dd if=/tmp/rec of=/dev/vda bs=$RECORD seek=$slot count=1 oflag=direct conv=notrunc,fsync 2>/dev/null; then
    set -- $(md5sum /tmp/rec)
    echo "$seq $1" > /tmp/t/$slot
    [ -n "$TRACE" ] && echo "FERRY W $seq $slot"
  else
    # The slot now holds the old record or the new one: neither can be checked.
    rm -f /tmp/t/$slot
    read errors < /tmp/errors
    echo $((errors + 1)) > /tmp/errors
    echo "FERRY ERR write slot=$slot seq=$seq"
  fi
}

writer() {
  TRACE=1
  while [ ! -e /tmp/stop ]; do write_one; done
}

while read -r cmd arg; do
  case "$cmd" in
    hello) echo "FERRY READY slots=$SLOTS" ;;
    write)
      n=0
      while [ $n -lt "$arg" ]; do
        write_one
        n=$((n + 1))
      done
      read seq < /tmp/seq
      read errors < /tmp/errors
      echo "FERRY WROTE seq=$seq errors=$errors"
      ;;
    start)
      rm -f /tmp/stop
      writer &
      WRITER=$!
      echo "FERRY STARTED"
      ;;
    stop)
      touch /tmp/stop
      wait $WRITER
      read seq < /tmp/seq
      read errors < /tmp/errors
      echo "FERRY STOPPED seq=$seq errors=$errors"
      ;;
    verify)
      ok=0
      bad=0
      for f in /tmp/t/*; do
        [ -e "$f" ] || continue
        slot=${f##*/}
        read seq want < "$f"
        set -- $(dd if=/dev/vda bs=$RECORD skip=$slot count=1 iflag=direct 2>/dev/null | md5sum)
        if [ "$1" = "$want" ]; then
          ok=$((ok + 1))
        else
          bad=$((bad + 1))
          echo "FERRY BAD slot=$slot seq=$seq want=$want got=$1"
        fi
      done
      echo "FERRY VERIFIED ok=$ok bad=$bad"
      ;;
    dump)
      n=0
      for f in /tmp/t/*; do
        [ -e "$f" ] || continue
        read seq sum < "$f"
        echo "FERRY REC ${f##*/} $seq $sum"
        n=$((n + 1))
      done
      echo "FERRY DUMPED $n"
      ;;
    poweroff) poweroff -f ;;
    "") ;;
    *) echo "FERRY UNKNOWN $cmd" ;;
  esac
done
echo "FERRY FATAL console closed"
poweroff -f
