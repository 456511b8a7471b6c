package datapath

// The BPF objects and Go types are generated from bpf/ with a pinned clang
// (clang-19) and committed, so building needs no clang. Regenerate with
//
//	go generate ./pkg/datapath
//
// CI regenerates and fails on `git diff --exit-code`. Every Go type and
// constant shared with C comes from bpf/zt_abi.h through -type below.

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -cflags "-O2 -g -Wall -Werror -std=gnu17 -I/usr/include/x86_64-linux-gnu" -type zt_ipcache_key -type zt_ipcache_val -type zt_endpoint -type zt_ep_ip -type zt_policy_key -type zt_policy_val -type zt_polmask -type zt_ct_key -type zt_ct_val -type zt_ct_flags -type zt_counter -type zt_flow_event -type zt_config -type zt_netns_val -type zt_bucket -type zt_identity -type zt_dir -type zt_verdict -type zt_reason -type zt_action -type zt_hook -type zt_ep_flags -type zt_cfg_flags -type zt_family ztTc ../../bpf/zt_tc.c
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -cflags "-O2 -g -Wall -Werror -std=gnu17 -I/usr/include/x86_64-linux-gnu" -no-global-types ztSock ../../bpf/zt_sock.c
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -cflags "-O2 -g -Wall -Werror -std=gnu17 -I/usr/include/x86_64-linux-gnu" -no-global-types ztNf ../../bpf/zt_nf.c
