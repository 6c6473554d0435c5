/*
 * startup.c: the least a Cortex-M program needs to run gradc's exported C under QEMU or on a board:
 * the vector table, a reset handler that copies .data and clears .bss, a stack painted with a
 * pattern (so main can report how deep it went), and output and exit through ARM semihosting
 * (QEMU: -semihosting-config enable=on,target=native). No newlib start-up code, no heap.
 */
#include <stddef.h>
#include <stdint.h>
#include "mcu.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack, _sstack;
int main(void);

#define PAINT 0xC0FFEE55u

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void mcu_puts(const char *s)
{
    semihost(0x04, s);          /* SYS_WRITE0: a NUL-terminated string to the host's stdout */
}

void mcu_put_hex(const char *tag, uint32_t v)
{
    char line[48];
    size_t k = 0;
    while (*tag && k < 32) line[k++] = *tag++;
    line[k++] = ' ';
    for (int s = 28; s >= 0; s -= 4) line[k++] = "0123456789abcdef"[(v >> s) & 15u];
    line[k++] = '\n';
    line[k] = 0;
    mcu_puts(line);
}

void mcu_put_float(const char *tag, float v)
{
    union { float f; uint32_t u; } b;
    b.f = v;
    mcu_put_hex(tag, b.u);
}

uint32_t mcu_stack_used(void)
{
    const uint32_t *p = &_sstack;
    while (p < &_estack && *p == PAINT) ++p;
    return (uint32_t)((const char *)&_estack - (const char *)p);
}

void mcu_exit(void)
{
    semihost(0x18, (const void *)0x20026);   /* SYS_EXIT, ADP_Stopped_ApplicationExit: QEMU exits 0 */
    for (;;) {
    }
}

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; ) *dst++ = 0;
    /* paint the stack below the current frame: mcu_stack_used() finds the deepest word written */
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &_sstack; (uintptr_t)p < sp - 64; ++p) *p = PAINT;
#if defined(__ARM_FP)
    /* enable the FPU (CP10, CP11 full access) before any float instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb");
#endif
    main();
    mcu_exit();
}

static void Default_Handler(void)
{
    mcu_puts("fault\n");
    mcu_exit();
}

__attribute__((section(".isr_vector"), used))
static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&_estack, Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, Default_Handler,
};
