/* Minimal <string.h> for type-checking the *-apple-darwin targets on Linux
 * (scripts/check-macos); the real macOS build uses the SDK's header. */
#ifndef CONNECTOR_STUB_STRING_H
#define CONNECTOR_STUB_STRING_H
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
#endif
