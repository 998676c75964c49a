/*
 * Preloaded into User-Mode Linux (Debian bookworm's 6.1 kernel) by the lab. On a host whose XSAVE
 * area is larger than UML's own buffer for it (Intel AMX: 11008 bytes), the host kernel accepts
 * PTRACE_SETREGSET NT_X86_XSTATE only with the whole area and answers EFAULT otherwise; UML 6.1
 * passes its shorter buffer and so panics at boot ("userspace - ptrace set fp regs failed,
 * errno = 14"). Here such a call gets the whole area: the target's current state with UML's bytes
 * over its start. What lies past UML's buffer is AMX tile state, which no guest process has (the
 * host never grants it AMX), so nothing UML keeps is lost or changed. Any other call is passed on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

long ptrace(enum __ptrace_request request, ...) {
  va_list ap;
  va_start(ap, request);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  void *data = va_arg(ap, void *);
  va_end(ap);
  static ptrace_fn real;
  if (!real) real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
  if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE && data != NULL) {
    static __thread unsigned char whole[65536] __attribute__((aligned(64)));
    struct iovec *iov = data;
    struct iovec current = {whole, sizeof whole};
    if (real(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &current) == 0 && current.iov_len > iov->iov_len) {
      memcpy(whole, iov->iov_base, iov->iov_len);
      return real(PTRACE_SETREGSET, pid, addr, &current);
    }
  }
  return real(request, pid, addr, data);
}
