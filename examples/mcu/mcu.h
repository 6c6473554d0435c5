/* mcu.h: output and exit through ARM semihosting, and the stack's high-water mark (startup.c). */
#ifndef GRADC_MCU_H
#define GRADC_MCU_H
#include <stdint.h>
void mcu_puts(const char *s);
void mcu_put_hex(const char *tag, uint32_t v);
void mcu_put_float(const char *tag, float v);
uint32_t mcu_stack_used(void);
void mcu_exit(void);
#endif
