#!/bin/busybox sh
# kvmlab guest init (busybox initramfs).  PID 1.
#
# Modes, chosen on the kernel command line with kvmlab.mode=:
#   workload  the seed's file operations on /dev/vda, one KVMLAB line per operation; with
#             kvmlab.data=vdb,vdc also a dd per round on each data disk (mounted at /data/vdX)
#   verify    check a manifest (from fw_cfg opt/kvmlab/manifest), print a verdict, power off
#   idle      mount the disk and wait
# Every line meant for the host starts with "KVMLAB " and is key=value separated by spaces.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "KVMLAB $*" > /dev/console; }
now() { cut -d' ' -f1 /proc/uptime; }
halt_now() { sync; umount /mnt 2>/dev/null; poweroff -f; }

# kvmlab.snap=1: the host saves this VM here, before any driver has seen a disk, and
# resumes copies of it; each copy gets its parameters (and a random seed) as one line
# on the console.  Otherwise the parameters are the kernel command line's.
params=$(cat /proc/cmdline)
case " $params " in
  *" kvmlab.snap=1 "*)
    stty -echo < /dev/console 2>/dev/null
    say snap t=$(now)
    read -r params < /dev/console
    for x in $params; do
      case "$x" in kvmlab.seed=*) echo "${x#*=}" > /dev/urandom;; esac
    done;;
esac

# Parameters: kvmlab.key=value -> P_key
P_mode=idle; P_qga=0; P_dd_kib=1024; P_pause_ms=500; P_rounds=0; P_duration_s=0; P_max_files=0; P_then_pause_ms=0; P_change_after_s=0; P_style=seed; P_blocks=4; P_poweroff=0; P_dev=/dev/vda; P_data=; P_ram_tick_kib=0; P_ram_set_mib=32; P_tools=0; P_fio=0
for x in $params; do
  case "$x" in
    kvmlab.*=*) k=${x#kvmlab.}; k=${k%%=*}; v=${x#*=}
      case "$k" in *[!a-z_]*) continue;; esac
      eval "P_$k=\$v";;
  esac
done

for m in $(cat /modules.list 2>/dev/null); do insmod "/lib/modules/$m.ko" 2>/dev/null; done
say boot t=$(now) mode=$P_mode

i=0
while [ ! -b "$P_dev" ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
mkdir -p /mnt
if ! mount -t ext4 "$P_dev" /mnt; then
  say error=mount dev=$P_dev t=$(now)
  [ "$P_mode" = verify ] && { say verdict=fail checked=0 bad=1 reason=mount; halt_now; }
  while :; do sleep 3600; done
fi
# data disks (kvmlab.data=vdb,vdc): each mounted at /data/vdX, written by the workload
mounted=
for d in $(echo "$P_data" | tr ',' ' '); do
  case "$d" in vd[b-z]) ;; *) say error=data-disk dev=$d t=$(now); continue;; esac
  i=0
  while [ ! -b "/dev/$d" ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
  mkdir -p "/data/$d"
  if mount -t ext4 "/dev/$d" "/data/$d"; then mounted="$mounted $d"
  else say error=mount dev=/dev/$d t=$(now); fi
done
# kvmlab.tools=1: the read-only tools disk (fio and its libraries), found by its serial
if [ "$P_tools" = 1 ]; then
  tdev=; i=0
  while [ -z "$tdev" ] && [ $i -lt 100 ]; do
    for blk in /sys/block/vd*; do
      [ "$(cat "$blk/serial" 2>/dev/null)" = kvmlab-tools ] && tdev=/dev/${blk##*/}
    done
    [ -z "$tdev" ] && usleep 50000; i=$((i+1))
  done
  mkdir -p /tools
  if [ -n "$tdev" ] && mount -t ext4 -o ro "$tdev" /tools; then
    say tools fio=$(tr ' ' _ < /tools/version) dev=$tdev t=$(now)
  else say error=tools dev=$tdev t=$(now); fi
fi
# the guest agent, when the host gave the VM its virtio-serial port (kvmlab.qga=1)
if [ "$P_qga" = 1 ] && [ -x /usr/sbin/qemu-ga ]; then
  port=; i=0
  while [ -z "$port" ] && [ $i -lt 100 ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
    done
    [ -z "$port" ] && usleep 50000; i=$((i+1))
  done
  mkdir -p /run /var/run /tmp /sbin
  # the guest's own shutdown, as qemu-ga's guest-shutdown runs it (/sbin/shutdown -r|-P|-H
  # +0 ...; busybox has none): it says so, returns at once (qemu-ga waits for it), then
  # syncs every disk and reboots, powers off or halts the kernel
  cat > /sbin/shutdown <<'EOS'
#!/bin/busybox sh
case "$1" in -r) how=reboot;; -H) how=halt;; *) how=poweroff;; esac
echo "KVMLAB shutdown how=$how t=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
( sleep 0.2; sync; "$how" -f ) </dev/null >/dev/null 2>&1 &
exit 0
EOS
  chmod 755 /sbin/shutdown
  if [ -n "$port" ] && [ -c "$port" ]; then
    /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid -l /run/qemu-ga.log &
    say qga port=$port t=$(now)
  else say error=qga-port t=$(now); fi
fi
say ready t=$(now)

# Operations act on the file system mounted at $R; on a data disk $D is "disk=vdX".
R=/mnt; D=
# begin NAME PATH : an operation starts (it is "in flight" until its op line).
begin() { say begin op=$1 path=$2 n=$i $D t=$(now); }

# op NAME PATH [K=V] : report one completed (synced) operation.
op() {
  p="$2"; size=0; sum=-
  if [ -f "$R$p" ]; then
    size=$(stat -c %s "$R$p"); sum=$(sha256sum "$R$p" | cut -d' ' -f1)
  fi
  say op=$1 path=$p size=$size sha256=$sum n=$i $D t=$(now) $3
}

# the microseconds between two "adjtimex" outputs (/proc/uptime counts only 10 ms steps;
# adjtimex reads the clock first and prints after, so parsing stays outside the interval)
elapsed_us() {
  printf '%s\n%s\n' "$1" "$2" | awk 'BEGIN{n=0} /tv_sec/{s[n]=$2} /tv_usec/{u[n++]=$2}
    END{printf "%.0f", (s[1]-s[0])*1000000 + u[1]-u[0]}'
}

# kvmlab.ram_tick_kib=K: 4 times a second K KiB of random data rewritten in place over a
# set of kvmlab.ram_set_mib MiB in RAM (the rootfs is RAM), no disk I/O: a buffer pool's
# dirtying, for a live migration's RAM stream
ram_dirtier() {
  mkdir -p /tmp
  chunks=$((P_ram_tick_kib / 64))          # 64 KiB blocks per tick (few system calls)
  dd if=/dev/urandom of=/tmp/ram.src bs=65536 count="$chunks" 2>/dev/null
  dd if=/dev/urandom of=/tmp/ram.set bs=1048576 count="$P_ram_set_mib" 2>/dev/null
  slots=$((P_ram_set_mib * 16 / chunks)); [ "$slots" -lt 1 ] && slots=1
  say ram_dirtier tick_kib=$P_ram_tick_kib set_mib=$P_ram_set_mib set_bytes=$(stat -c %s /tmp/ram.set) t=$(now)
  k=0
  while :; do
    dd if=/tmp/ram.src of=/tmp/ram.set bs=65536 count="$chunks" \
       seek=$((k * chunks)) conv=notrunc 2>/dev/null
    k=$(((k + 1) % slots))
    usleep 250000
  done
}

# kvmlab.fio=1: fio from the tools disk runs the job file the host passed (fw_cfg
# opt/kvmlab/fio) on /mnt/fio, beside the file operations; its JSON status, once a second,
# becomes one "KVMLAB fio_status" line (kvmlab.guest.fio reads them back)
fio_run() {
  jf=/sys/firmware/qemu_fw_cfg/by_name/opt/kvmlab/fio/raw
  if [ ! -r "$jf" ] || [ ! -x /tools/usr/bin/fio ]; then say error=fio why=no-job-or-tools t=$(now); return; fi
  mkdir -p /mnt/fio /tmp && cp "$jf" /tmp/job.fio
  cat > /tmp/fio_status.awk <<'EOA'
# fio's JSON status blocks (one a second) -> one KVMLAB fio_status line each
function flush(   d, k, s, out) {
  out = "KVMLAB fio_status ms=" ms
  for (d = 1; d <= 2; d++) {
    out = out " " sub1[d] "_bytes=" (bytes[d] + 0) " " sub1[d] "_ios=" (ios[d] + 0)
    s = ""
    for (k in lat) { split(k, kk, SUBSEP); if (kk[1] == d) s = s (s == "" ? "" : ",") kk[2] ":" lat[k] }
    out = out " " sub1[d] "_lat=" (s == "" ? "-" : s)
  }
  print out; fflush()
  split("", bytes); split("", ios); split("", lat); dir = 0; depth = 0
}
# a latency (ns) -> its bucket: 8 linear steps per power of two (busybox awk has no log)
function bucket(v,   e) { e = 0; while (v >= 2) { v /= 2; e++ }; return e * 8 + int((v - 1) * 8) }
BEGIN { sub1[1] = "r"; sub1[2] = "w" }
{
  line = $0
  if (line ~ /^\}/) { flush(); next }
  if (line ~ /"timestamp_ms" :/) { v = line; gsub(/[^0-9]/, "", v); ms = v }
  opens = gsub(/\{/, "{", line); closes = gsub(/\}/, "}", line)
  if (line ~ /^ *"read" : \{/) { dir = 1; base = depth }
  else if (line ~ /^ *"write" : \{/) { dir = 2; base = depth }
  else if (line ~ /^ *"(trim|sync)" : \{/) { dir = 0 }
  if (dir && line ~ /^ *"clat_ns" : \{/) inclat = depth + 1
  if (dir && inclat && line ~ /^ *"bins" : \{/) inbins = 1
  else if (inbins && line ~ /^ *"[0-9]+" : [0-9]+/) {
    split(line, kv, "\""); n = kv[3]; gsub(/[^0-9]/, "", n)
    lat[dir, bucket(kv[2] + 0)] += n
  } else if (dir && depth == base + 1 && line ~ /"io_bytes" :/) { v = line; gsub(/[^0-9]/, "", v); bytes[dir] += v }
  else if (dir && depth == base + 1 && line ~ /"total_ios" :/) { v = line; gsub(/[^0-9]/, "", v); ios[dir] += v }
  depth += opens - closes
  if (inbins && closes && !opens) inbins = 0
  if (inclat && depth < inclat) inclat = 0
  if (dir && depth <= base) dir = 0
}
EOA
  say fio_start t=$(now)
  { /tools/lib64/ld-linux-x86-64.so.2 --library-path "$(cat /tools/libpath)" /tools/usr/bin/fio \
      --status-interval=1 --output-format=json+ /tmp/job.fio 2>/tmp/fio.err; echo $? > /tmp/fio.rc; } \
    | awk -f /tmp/fio_status.awk > /dev/console
  rc=$(cat /tmp/fio.rc)
  if [ "$rc" = 0 ]; then say fio_done rc=0 t=$(now)
  else say fio_done rc=$rc why=$(head -c 160 /tmp/fio.err | tr -c 'A-Za-z0-9._:/=,-' _) t=$(now); fi
}

workload() {
  [ "$P_ram_tick_kib" -gt 0 ] && ram_dirtier &
  mkdir -p /mnt/wl && sync
  data=
  for d in $mounted; do mkdir -p "/data/$d/wl" && data="$data $d"; done
  sync
  if [ $((P_dd_kib % 64)) -eq 0 ]; then bs=65536; cnt=$((P_dd_kib / 64)); else bs=1024; cnt=$P_dd_kib; fi
  pause=$(awk "BEGIN{printf \"%.3f\", $P_pause_ms/1000}")
  t0=$(now); t0=${t0%.*}
  i=0; oldest=1
  say workload_start t=$(now) dd_kib=$P_dd_kib pause_ms=$P_pause_ms${data:+ data=$(echo $data | tr ' ' ,)}
  while :; do
    i=$((i+1))
    [ "$P_rounds" -gt 0 ] && [ $i -gt "$P_rounds" ] && break
    if [ "$P_duration_s" -gt 0 ]; then t=$(now); [ $((${t%.*} - t0)) -ge "$P_duration_s" ] && break; fi
    # a rate change mid-job (kvmlab.change_after_s): the same writes, another pause
    if [ "$P_change_after_s" -gt 0 ]; then
      t=$(now)
      if [ $((${t%.*} - t0)) -ge "$P_change_after_s" ]; then
        pause=$(awk "BEGIN{printf \"%.3f\", $P_then_pause_ms/1000}")
        say rate_change t=$(now) pause_ms=$P_then_pause_ms
        P_change_after_s=0
      fi
    fi
    begin touch /wl/f$i; touch /mnt/wl/f$i && sync && op touch /wl/f$i
    begin mkdir /wl/d$i; mkdir /mnt/wl/d$i && sync && op mkdir /wl/d$i
    if [ "$cnt" -gt 0 ]; then
      begin dd /wl/w$i.bin
      # each write's latency, as the guest sees it: dd with its fsync, nothing else
      a=$(adjtimex); dd if=/dev/urandom of=/mnt/wl/w$i.bin bs=$bs count=$cnt conv=fsync 2>/dev/null
      rc=$?; b=$(adjtimex)
      [ $rc -eq 0 ] && sync && op dd /wl/w$i.bin "dd_us=$(elapsed_us "$a" "$b")"
      for d in $data; do
        R=/data/$d; D=disk=$d
        begin dd /wl/w$i.bin
        dd if=/dev/urandom of=$R/wl/w$i.bin bs=$bs count=$cnt conv=fsync 2>/dev/null && sync && op dd /wl/w$i.bin
        R=/mnt; D=
      done
    fi
    if [ $i -gt 1 ]; then
      begin rmdir /wl/d$((i-1)); rmdir /mnt/wl/d$((i-1)) && sync && op rmdir /wl/d$((i-1))
    fi
    if [ "$P_max_files" -gt 0 ] && [ $((i - oldest)) -ge "$P_max_files" ]; then
      begin rm /wl/w$oldest.bin; rm -f /mnt/wl/w$oldest.bin && sync && op rm /wl/w$oldest.bin
      for d in $data; do
        R=/data/$d; D=disk=$d
        begin rm /wl/w$oldest.bin; rm -f $R/wl/w$oldest.bin && sync && op rm /wl/w$oldest.bin
        R=/mnt; D=
      done
      oldest=$((oldest+1))
    fi
    sleep "$pause"
  done
  say workload_done t=$(now) rounds=$((i-1))
}

# consistency: operation N writes /c/oN, P_blocks blocks of 4 KiB, each naming the
# operation and the block (so the host tells an intact file from a torn or an empty one).
# Odd operations are synced (the file's fsync returned before the op line); even ones
# are only written (the write returned; the data sits in the guest's page cache).
# us= is the operation's latency as the guest saw it (its write, and fsync if synced).
blocks_of() {
  k=0
  while [ $k -lt "$P_blocks" ]; do printf '%-4095s\n' "kvmlab op $1 block $k"; k=$((k+1)); done
}
consistency() {
  mkdir -p /mnt/c && sync
  pause=$(awk "BEGIN{printf \"%.3f\", $P_pause_ms/1000}")
  i=0
  say workload_start t=$(now) style=consistency blocks=$P_blocks pause_ms=$P_pause_ms
  while :; do
    i=$((i+1))
    [ "$P_rounds" -gt 0 ] && [ $i -gt "$P_rounds" ] && break
    if [ $((i % 2)) -eq 1 ]; then cls=synced; else cls=written; fi
    say begin op=write path=/c/o$i n=$i cls=$cls t=$(now)
    a=$(adjtimex)
    blocks_of $i > /mnt/c/o$i || continue
    if [ $cls = synced ]; then
      dd if=/dev/null of=/mnt/c/o$i conv=notrunc,fsync 2>/dev/null || continue
    fi
    b=$(adjtimex)
    say op=write path=/c/o$i n=$i cls=$cls t=$(now) us=$(elapsed_us "$a" "$b")
    sleep "$pause"
  done
  say workload_done t=$(now) rounds=$((i-1))
}

verify() {
  mf=/sys/firmware/qemu_fw_cfg/by_name/opt/kvmlab/manifest/raw
  if [ ! -r "$mf" ]; then say verdict=fail checked=0 bad=1 reason=no-manifest; halt_now; fi
  cp "$mf" /manifest
  checked=0; bad=0
  while read -r kind path sum; do
    [ -z "$kind" ] && continue
    checked=$((checked+1)); ok=1
    case "$kind" in
      F) if [ -f "/mnt$path" ]; then
           got=$(sha256sum "/mnt$path" | cut -d' ' -f1)
           [ "$got" = "$sum" ] || { ok=0; say check=bad kind=F path=$path why=checksum; }
         else ok=0; say check=bad kind=F path=$path why=missing; fi;;
      D) [ -d "/mnt$path" ] || { ok=0; say check=bad kind=D path=$path why=missing; };;
      G) [ -e "/mnt$path" ] && { ok=0; say check=bad kind=G path=$path why=present; };;
      U) checked=$((checked-1))   # in flight at the cut-off: report what is there
         if [ -f "/mnt$path" ]; then
           say state=file path=$path size=$(stat -c %s "/mnt$path") sha256=$(sha256sum "/mnt$path" | cut -d' ' -f1)
         elif [ -d "/mnt$path" ]; then say state=dir path=$path
         else say state=absent path=$path; fi;;
      *) ok=0; say check=bad kind=$kind path=$path why=unknown-kind;;
    esac
    [ $ok = 1 ] || bad=$((bad+1))
  done < /manifest
  if [ $bad -eq 0 ]; then v=pass; else v=fail; fi
  say verdict=$v checked=$checked bad=$bad t=$(now)
  halt_now
}

case "$P_mode" in
  workload) [ "$P_fio" = 1 ] && fio_run &
            if [ "$P_style" = consistency ]; then consistency; else workload; fi
            # kvmlab.poweroff=1: the guest shuts down once its workload is done
            if [ "$P_poweroff" = 1 ]; then
              say poweroff t=$(now); sync; for d in $mounted; do umount "/data/$d"; done; halt_now
            fi
            while :; do sleep 3600; done;;
  verify) verify;;
  *) while :; do sleep 3600; done;;
esac
